"""Drafter kinds: what ``[drafter] kind`` and ``--kind`` name, registered through
``opd_register_drafter_kinds``.

The registry is the one list of kinds. ``opdplug drafter train|eval|export`` and the OPD loop's
validation look a name up there (``registry.get("drafter_kinds", name, "drafter.kind")``: an
unknown name is a one-line error listing the registered ones), so a kind another distribution
registers through its own ``opdplug`` entry point works wherever a built-in one does. A kind is a
``DrafterKind`` or any object with the same members:

* ``load(path, target) -> Drafter`` (``base.Drafter``) and ``recognises(path)``: evaluation;
* ``validate_options(table) -> options``: its ``[drafter.options]`` table validated, one-line
  ``ConfigError`` otherwise (None: the kind takes no options);
* ``train(request: TrainRequest) -> TrainOutcome``: ``opdplug drafter train`` (None: opdplug
  does not train it);
* ``export(source, output_dir, target_dir) -> Path``: ``opdplug drafter export``, writing
  ``output_dir`` atomically (None: no export).
* ``stages() -> object``: the kind trains in the core loop (``opdplug.loop``) with stages of its
  own (load the models, roll out, score, forward, loss, save): see ``loop_stages`` (None: the
  kind either trains the config's ``[student]`` with the loop's default stages, as
  ``standalone`` does, or trains on its own in ``train``).

The built-in kinds, ``standalone`` and ``eagle3``, are in ``builtin_kinds``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from opdplug.errors import ConfigError

KIND = "drafter_kinds"
"""The registry kind (``opd_register_drafter_kinds``)."""


@dataclass(frozen=True)
class TrainRequest:
    """What ``opdplug drafter train`` hands a kind's ``train``."""

    config: Any
    """The run's config (``opdplug.config.Config``): ``config.plugin("drafter")`` is ``[drafter]``,
    ``config.teacher.path`` the target, ``config.task`` the prompts."""
    manager: Any
    """The plugin manager (``manager.registry`` builds tasks, scorers ...)."""
    options: Any
    """The kind's options: what its ``validate_options`` made of ``[drafter.options]`` (or None)."""
    output_dir: Path
    """Where the run goes (``--output-dir``, else ``run.output_dir``)."""
    steps: Optional[int] = None
    """``--steps``, when given."""
    quiet: bool = False
    """``--json``: no progress bars, no tables."""

    @property
    def drafter(self) -> Any:
        """The ``[drafter]`` table (``options.DrafterOptions``)."""
        return self.config.plugin("drafter")

    @property
    def target_dir(self) -> Path:
        """``[teacher] path``, the target model directory (one-line error when it is not one)."""
        path = Path(self.config.teacher.path or "")
        if not self.config.teacher.path or not (path / "config.json").is_file():
            raise ConfigError(f"teacher.path = {self.config.teacher.path!r} is not a model directory; "
                              f"build the built-in target with 'opdplug drafter target'")
        return path

    def load_target(self) -> tuple[Any, Any]:
        """``(target, tokenizer)``: the target model (eval mode) and its tokenizer."""
        from opdplug_local import models as local

        path = str(self.target_dir)
        return local.load_model(path, "teacher.path").eval(), local.load_tokenizer(path)

    def task(self, tokenizer) -> Any:
        """The config's ``[task]`` speaking ``tokenizer``'s ids."""
        from opdplug.prepare import build_task

        return build_task(self.manager.registry, self.config.task.name, self.config.task.options, tokenizer)

    def measure(self, target, tokenizer, task, drafter) -> list:
        """Exact speculative decoding of held-out prompts with ``drafter`` for ``target``, as
        ``[drafter]`` asks (``draft_tokens``, ``eval_prompts``, ``eval_batch_size``,
        ``eval_temperatures``, ``eval_seed``); acceptance only, no timing. ``specdec.SpecReport``s."""
        from .evaluation import evaluate

        d = self.drafter
        return evaluate(target, drafter, task, eos_id=tokenizer.eos_token_id, k=d.draft_tokens, n_prompts=d.eval_prompts,
                        batch_sizes=(d.eval_batch_size,), temperatures=tuple(d.eval_temperatures), time_it=False,
                        seed=d.eval_seed)


@dataclass(frozen=True)
class TrainOutcome:
    """What a kind's ``train`` returns; ``opdplug drafter train`` prints it as one JSON line."""

    output_dir: Path
    """The run directory (``opdplug drafter eval|export`` take it)."""
    steps: int
    """Optimizer steps (or passes) done."""
    acceptance: Optional[dict] = None
    """Acceptance length of the result per serving temperature (``{"T0": 2.7, "T1": 2.1}``)."""
    summary: dict = field(default_factory=dict)
    """More JSON fields, the kind's own (model directories, plots, losses)."""
    text: str = ""
    """Printed before the JSON line unless ``--json``."""

    def to_json(self, kind: str) -> dict:
        return {"kind": kind, "output_dir": str(self.output_dir), "steps": self.steps, **self.summary,
                "acceptance": self.acceptance}


def acceptance_of(reports) -> dict:
    """``{"T<temperature>": acceptance length}`` of ``specdec.SpecReport``s."""
    return {f"T{r.temperature:g}": r.acceptance_length for r in reports}


@dataclass(frozen=True)
class DrafterKind:
    """One registered kind of drafter."""

    name: str
    """Registry name (``[drafter] kind``, ``--kind``)."""
    help: str
    """One line for listings."""
    load: Callable[[Path, Any], Any]
    """``load(path, target_model) -> Drafter``: a checkpoint directory, loaded for that target."""
    recognises: Callable[[Path], bool]
    """Whether a directory holds a checkpoint of this kind (``--kind auto``)."""
    train: Optional[Callable[[TrainRequest], TrainOutcome]] = None
    """``opdplug drafter train`` (None: not trained by opdplug)."""
    validate_options: Optional[Callable[[dict], Any]] = None
    """``[drafter.options]`` -> the kind's options, one-line ``ConfigError`` (None: takes none)."""
    export: Optional[Callable[[Path, Path, Path], Path]] = None
    """``export(source, output_dir, target_dir) -> output_dir``, written atomically (None: none)."""
    stages: Optional[Callable[[], Any]] = None
    """The kind's core-loop stages object, imported when first asked for (``loop_stages``); None:
    none of its own."""
    fallback: bool = False
    """``--kind auto`` asks this kind last (its ``recognises`` accepts any model directory)."""


def get_kind(registry, name: str, key: str = "drafter.kind") -> Any:
    """The registered kind ``name``; one-line ``ConfigError`` naming ``key`` and the registered ones."""
    return registry.get(KIND, name, key)


def kind_options(kind, drafter_options) -> Any:
    """The kind's validated options from ``[drafter]``'s kind table (one-line errors)."""
    where, table = drafter_options.kind_table()
    validate = getattr(kind, "validate_options", None)
    if validate is None:
        if table:
            raise ConfigError(f"drafter.kind = {drafter_options.kind!r} takes no options, got [drafter.{where}] {sorted(table)}")
        return None
    try:
        return validate(table)
    except ConfigError as exc:
        if where == "options":
            raise
        raise ConfigError(str(exc).replace("drafter.options", f"drafter.{where}")) from None


def detect_kind(path: Path, kinds: dict) -> str:
    """The registered kind whose ``recognises`` accepts ``path`` (``fallback`` kinds asked last);
    one-line error when none does."""
    order = sorted(kinds, key=lambda n: (bool(getattr(kinds[n], "fallback", False)), n))
    for name in order:
        recognises = getattr(kinds[name], "recognises", None)
        if recognises is not None and recognises(Path(path)):
            return name
    raise ConfigError(f"{str(path)!r} is not a drafter checkpoint any kind recognises ({', '.join(sorted(kinds))}); pass --kind")
