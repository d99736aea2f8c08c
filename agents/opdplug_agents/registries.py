"""Environments and locators by name, resolved through the opdplug registry: never through a
closed list.

This plugin registers its own environments (``opd_register_environments``) and earliest-error
locators (``opd_register_locators``) exactly as a third-party plugin registers its own, so
every name is looked up in a ``Registry``: the run's (``ctx.registry``) wherever there is a
run, else the registry of the installed plugins (``installed_registry()``: the entry points
``opdplug plugins`` lists, as ``OPDPLUG_PLUGINS`` selects them). A name no plugin registered is
a one-line ``ConfigError`` that lists the ones that are.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional

from opdplug.errors import ConfigError
from opdplug.manager import ENV_DISABLE_AUTOLOAD, ENV_ONLY, Registry, make_plugin_manager

ENVIRONMENTS = "environments"
"""The registry kind of environments (hookspec ``opd_register_environments``)."""
LOCATORS = "locators"
"""The registry kind of earliest-error locators (hookspec ``opd_register_locators``)."""


def installed_registry() -> Registry:
    """The registry of the installed plugins, built once per selection of entry points (a test
    that changes ``OPDPLUG_PLUGINS`` gets the registry of what it selected)."""
    return _registry_for(os.environ.get(ENV_ONLY, ""), os.environ.get(ENV_DISABLE_AUTOLOAD, ""))


@functools.lru_cache(maxsize=8)
def _registry_for(only: str, disabled: str) -> Registry:
    # The arguments are the cache key only: make_plugin_manager reads the same variables.
    return make_plugin_manager().registry


def registry_or_installed(registry: Optional[Registry]) -> Registry:
    """``registry``, or the installed plugins' when None (library calls outside a run)."""
    return installed_registry() if registry is None else registry


def env_names(registry: Optional[Registry] = None) -> list[str]:
    """Every registered environment's name, sorted."""
    return registry_or_installed(registry).names(ENVIRONMENTS)


def env_class(name: str, registry: Optional[Registry] = None, key: str = "") -> Any:
    """The environment class (or factory) registered as ``name``.

    :param key: what the user set, for the message (``"task.options.env"``, ``"--env"``; ""
        when the name comes from no setting, e.g. a recorded episode).
    :raises ConfigError: (one line) no plugin registered ``name``; the message lists those that did.
    """
    if not isinstance(name, str) or not name:
        known = ", ".join(env_names(registry)) or "(none registered)"
        raise ConfigError(f"{key or 'environment'} = {name!r} names no environment; registered: {known}")
    reg = registry_or_installed(registry)
    if name not in reg.names(ENVIRONMENTS) and GYMNASIUM in reg.names(ENVIRONMENTS):
        by_id = GymnasiumById.find(name, reg.get(ENVIRONMENTS, GYMNASIUM))
        if by_id is not None:
            return by_id
    return reg.get(ENVIRONMENTS, name, key)


GYMNASIUM = "gymnasium"
"""The registered name of the gymnasium adapter, which also serves environment names that are
gymnasium ids (``"TinyQuest-v0"``, or ``"tinyquest:TinyQuest-v0"`` to import ``tinyquest`` first)."""


class GymnasiumById:
    """The ``gymnasium`` adapter with its ``id`` (and ``module``) fixed by an environment name."""

    tools = None

    def __init__(self, adapter: Any, gym_id: str, module: str) -> None:
        self.adapter, self.gym_id, self.module = adapter, gym_id, module

    @classmethod
    def find(cls, name: str, adapter: Any) -> Optional["GymnasiumById"]:
        """The factory for ``name`` when it is a gymnasium id (after importing its module), else None."""
        import importlib

        import gymnasium

        module, _, gym_id = name.rpartition(":")
        if module:
            try:
                importlib.import_module(module)
            except ImportError:
                return None
        return cls(adapter, gym_id, module) if gym_id in gymnasium.registry else None

    def __call__(self, **options: Any) -> Any:
        return self.adapter(id=self.gym_id, module=self.module, **options)

    def horizon_range_for(self, options: dict) -> tuple[int, int]:
        return self.adapter.horizon_range_for(options)

    def vector_group(self, options: dict, n: int, registry: Optional[Registry] = None) -> Any:
        return self.adapter.vector_group({**options, "id": self.gym_id, "module": self.module}, n, registry)

    def vocabulary(self) -> list[str]:
        return self.adapter.vocabulary()


def horizon_range(name: str, env_options: Optional[dict] = None, registry: Optional[Registry] = None,
                  key: str = "") -> tuple[int, int]:
    """The horizons environment ``name`` takes with ``env_options``: its factory's
    ``horizon_range_for(options)`` when it has one (a range that depends on the options, as the
    ``gymnasium`` adapter's), else its ``horizon_range``."""
    factory = env_class(name, registry, key)
    by_options = getattr(factory, "horizon_range_for", None)
    lo, hi = by_options(dict(env_options or {})) if by_options is not None else factory.horizon_range
    return int(lo), int(hi)


def make_env(name: str, options: dict, registry: Optional[Registry] = None, key: str = "") -> Any:
    """A bare environment ``name`` built with keyword ``options``; an option it does not take is
    a one-line ``ValueError`` naming the environment."""
    factory = env_class(name, registry, key)
    try:
        return factory(**options)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"{name}: {str(exc).splitlines()[0]}") from None


def episode_env(episode: Any, registry: Optional[Registry] = None) -> Any:
    """A fresh environment at the start of ``episode`` (anything with ``env``, ``seed`` and
    ``options``: an ``Episode`` or an ``EpisodeSpec``)."""
    env = make_env(episode.env, dict(episode.options), registry)
    env.reset(seed=episode.seed)
    return env


def build_locator(name: str, options: Optional[dict] = None, key: str = "locator", registry: Optional[Registry] = None) -> Any:
    """The locator registered as ``name``, built from ``options`` (validated against its
    dataclass fields: unknown keys, wrong types and bad values are one-line ``ConfigError``s
    naming ``key``)."""
    if not isinstance(name, str) or not name:
        known = ", ".join(registry_or_installed(registry).names(LOCATORS)) or "(none registered)"
        raise ConfigError(f"{key} = {name!r} names no locator; registered: {known}")
    return registry_or_installed(registry).build(LOCATORS, name, dict(options or {}), key)
