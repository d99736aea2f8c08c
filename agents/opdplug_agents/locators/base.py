"""What every earliest-error locator shares: its dependencies (``LocatorDeps``) and the turns
it may flag.

A locator of any plugin (registered through ``opd_register_locators``) is a frozen dataclass of
its options with ``locate(episodes, deps, *, start=None) -> list[Optional[int]]``. The helpers
here are public so that an outside locator counts and skips turns exactly as the built-in ones:
``start_turns`` (``start`` per episode), ``student_turns`` (the turns it may flag) and
``deps.record(found)`` (the ``episodes``/``located`` counters).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch

from ..episodes import Episode
from ..registries import episode_env

Start = Union[None, int, Sequence[int]]
"""Where the search starts: None (turn 0), one turn for every episode, or one per episode."""
Scorer = Callable[[Sequence[Episode]], list]
"""``scorer(episodes) -> per episode, per turn, the teacher's per-token log-probs of the
action ids`` (a stand-in for the teacher model in ``teacher_logprob``)."""


@dataclass
class LocatorDeps:
    """What a locator may use, and where it reports (a mutable bag, one per sampler call)."""

    tokenizer: Any
    """The tokenizer of the episodes' ids."""
    teacher: Any = None
    """The teacher: a local model (``torch.nn.Module``), a ``ModelActor``, or an ``ExpertActor``
    / ``PolicyActor`` (program stand-ins; ``teacher_rollouts`` only). None: locators that need one raise."""
    scorer: Optional[Scorer] = None
    """Overrides the teacher model's scoring in ``teacher_logprob`` (e.g. a stub in tests)."""
    max_action_tokens: int = 16
    """Token budget of one action in ``teacher_rollouts`` continuations."""
    temperature: float = 1.0
    """The run's rollout temperature (a locator's own ``temperature`` option may override)."""
    generator: Optional[torch.Generator] = None
    """Seeded generator for sampled continuations."""
    registry: Any = None
    """Where the environments are registered (``ctx.registry`` in a run; None: the installed
    plugins')."""
    stats: Counter = field(default_factory=Counter)
    """Counters (listed in the docstring of ``opdplug_agents.locators``)."""
    notes: list = field(default_factory=list)
    """One line per problem met (e.g. why a judge reply was unusable)."""

    def env(self, episode: Episode):
        """A fresh environment at the start of ``episode``."""
        return episode_env(episode, self.registry)

    def record(self, found: list[Optional[int]]) -> list[Optional[int]]:
        """Count the episodes searched and the errors located; return ``found`` unchanged."""
        self.stats["episodes"] += len(found)
        self.stats["located"] += sum(k is not None for k in found)
        return found


def start_turns(start: Start, n: int) -> list[int]:
    """``start`` as one turn per episode (None: 0 for all)."""
    if start is None:
        return [0] * n
    if isinstance(start, int):
        return [start] * n
    starts = [int(s) for s in start]
    if len(starts) != n:
        raise ValueError(f"{len(starts)} start turns for {n} episodes")
    return starts


def student_turns(episode: Episode, start: int) -> list[int]:
    """Turn indices a locator may flag: student turns from ``start`` on."""
    return [t for t, turn in enumerate(episode.turns) if t >= start and turn.producer == "student"]
