"""Built-in teacher routers: by a dataset column (a domain), or one fixed mixture for all."""
from __future__ import annotations

from dataclasses import dataclass, field

from opdplug.errors import ConfigError
from opdplug.types import Prompt


def _weights(route, where: str) -> dict[str, float]:
    """A route as {teacher: weight}: a name alone is weight 1; weights are normalised."""
    if isinstance(route, str):
        return {route: 1.0}
    if not isinstance(route, dict) or not route:
        raise ConfigError(f"{where} must be a teacher name or a table {{teacher = weight}}, got {route!r}")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0 for w in route.values()):
        raise ConfigError(f"{where}: mixture weights must be positive numbers, got {route!r}")
    total = float(sum(route.values()))
    return {name: float(w) / total for name, w in route.items()}


@dataclass(frozen=True)
class ColumnRouter:
    """``column``: the prompt's value in a dataset column picks its teacher (or mixture)."""

    column: str = "domain"
    """The dataset column (``Prompt.meta`` key) holding each row's domain."""
    routes: dict = field(default_factory=dict)
    """Domain value -> a teacher name, or a table of teacher weights (a mixture)."""
    default: str = ""
    """The teacher for values ``routes`` does not name; empty: such a row is an error."""

    def __post_init__(self):
        if not self.routes and not self.default:
            raise ConfigError("router 'column' needs routes = {<value> = <teacher>, ...} or a default teacher")
        for value, route in self.routes.items():
            _weights(route, f"teacher.options.router_options.routes.{value}")

    def teachers_named(self) -> set[str]:
        names = {n for route in self.routes.values() for n in _weights(route, "route")}
        return names | ({self.default} if self.default else set())

    def mixtures(self) -> list[set[str]]:
        return [set(w) for w in (_weights(r, "route") for r in self.routes.values()) if len(w) > 1]

    def __call__(self, prompt: Prompt) -> dict[str, float]:
        value = prompt.meta.get(self.column) if prompt.meta else None
        if value is None and not self.default:
            raise ConfigError(f"a prompt has no column {self.column!r} to route its teacher by; add the column or set "
                              f"teacher.options.router_options.default")
        route = self.routes.get(str(value), self.default or None)
        if route is None:
            raise ConfigError(f"no teacher is routed for {self.column} = {value!r}; add it to "
                              f"teacher.options.router_options.routes or set a default")
        return _weights(route, f"routes.{value}")


@dataclass(frozen=True)
class MixtureRouter:
    """``mixture``: every prompt to the same weighted mixture of teachers."""

    weights: dict = field(default_factory=dict)
    """Teacher name -> weight (normalised to sum 1)."""

    def __post_init__(self):
        _weights(self.weights, "teacher.options.router_options.weights")

    def teachers_named(self) -> set[str]:
        return set(self.weights)

    def mixtures(self) -> list[set[str]]:
        return [set(self.weights)] if len(self.weights) > 1 else []

    def __call__(self, prompt: Prompt) -> dict[str, float]:
        return _weights(self.weights, "weights")
