"""The run context every hook receives: config, registry, models, accelerator, step."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from .config import Config
if TYPE_CHECKING:  # pragma: no cover: annotations only (the manager builds contexts, not the reverse)
    from .manager import Manager, Registry


@dataclass
class RunContext:
    """What a run holds. Mutable (the step advances); hooks read it, and may stash state in
    ``scratch`` under their own plugin's name."""

    config: Config
    """The validated config."""
    manager: "Manager"
    """The plugin manager (``manager.hook`` calls hooks)."""
    accelerator: Any = None
    """The ``accelerate.Accelerator`` (device, processes, gradient sync)."""
    tokenizer: Any = None
    """The student's tokenizer (the teacher's is checked identical before training)."""
    student: Optional[torch.nn.Module] = None
    """The student as prepared by accelerate (possibly DDP- or peft-wrapped)."""
    teacher: Optional[torch.nn.Module] = None
    """The local teacher, frozen, or None when the scorer needs none."""
    task: Any = None
    """The prompt source (``opdplug_local.tasks.Task``)."""
    step: int = 0
    """The optimizer step in progress (0-based)."""
    data_position: int = 0
    """How far into the task's training stream the run has read (tasks with ``take``); saved
    in every checkpoint, so a resumed run reads on from exactly there."""
    next_data_position: int = 0
    """Where the step being prepared ends in that stream; becomes ``data_position`` once the
    step succeeded (a step redone after a server failure reads the same prompts again)."""
    scratch: dict = field(default_factory=dict)
    """Per-plugin state, keyed by plugin name."""
    _components: dict = field(default_factory=dict)
    _live: bool = False
    _set_up: set = field(default_factory=set)

    @property
    def registry(self) -> "Registry":
        return self.manager.registry

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    def component(self, kind: str, name: str, options: dict | None, key: str) -> Any:
        """The configured component, built once per run (options validated on first use)."""
        name = self.registry.resolve(kind, name, key)
        cache_key = (kind, name, key)
        if cache_key not in self._components:
            component = self.registry.build(kind, name, options or {}, key)
            self._components[cache_key] = component
            if self._live:
                self._setup(component)
        return self._components[cache_key]

    def _setup(self, component: Any) -> None:
        # Once per object: a registered instance may be asked for under several keys.
        if hasattr(component, "setup") and id(component) not in self._set_up:
            self._set_up.add(id(component))
            component.setup(self)

    # -- the optional component lifecycle (``opdplug.types.Component``) ----------------------
    def _unique_components(self) -> list:
        seen: dict[int, Any] = {}
        for component in [*self._components.values(), *([self.task] if self.task is not None else [])]:
            seen.setdefault(id(component), component)
        return list(seen.values())

    def setup_components(self) -> None:
        """Call ``setup(ctx)`` on every component built so far (and on later ones as they are
        built): the models are loaded."""
        self._live = True
        for component in self._unique_components():
            self._setup(component)

    def component_metrics(self) -> dict:
        """Every component's ``metrics()``, merged (called once per optimizer step)."""
        out: dict = {}
        for component in self._unique_components():
            if hasattr(component, "metrics"):
                out.update(component.metrics() or {})
        return out

    def close_components(self) -> None:
        """Call ``close()`` on every component that has one (the run is ending)."""
        self._live = False
        errors = []
        for component in self._unique_components():
            if hasattr(component, "close"):
                try:
                    component.close()
                except Exception as exc:  # one component failing to close must not keep the others open
                    errors.append(exc)
        if errors:
            raise errors[0]

    def student_module(self) -> torch.nn.Module:
        """The student without the DDP wrapper (peft wrappers stay: they hold the adapter)."""
        if self.accelerator is not None:
            return self.accelerator.unwrap_model(self.student)
        return self.student

    def generator(self, *parts: Any) -> torch.Generator:
        """A torch generator seeded from the run seed, the process and ``parts`` (e.g. step and
        micro-batch): sampling is a function of where in the run it happens, so a resumed run
        draws exactly what the uninterrupted one drew."""
        return torch.Generator(device="cpu").manual_seed(
            derive_seed(self.config.run.seed, self.process_index, *parts)
        )

    def row_seeds(self, prompts: Sequence[Any], *parts: Any) -> list[int]:
        """One sampling seed per prompt (for ``sampling.sample(row_seeds=...)``), from the run
        seed, ``parts`` (e.g. stream and step) and the prompt's global row index
        (``Prompt.row``), never the process: two processes draw exactly what one process with
        the same global batch draws. A prompt the loop did not place (``row < 0``) falls back
        to its position in ``prompts`` on this process."""
        seed = self.config.run.seed
        return [
            derive_seed(seed, "row", *parts, p.row) if getattr(p, "row", -1) >= 0
            else derive_seed(seed, "unplaced", self.process_index, *parts, i)
            for i, p in enumerate(prompts)
        ]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
