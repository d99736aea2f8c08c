"""The ``teacher_rollouts`` locator: where the teacher's chances of success drop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch

from opdplug.errors import ConfigError

from ..actors import ExpertActor, ModelActor, PolicyActor
from ..episodes import Episode, FixedTurn
from ..rollout import run_episodes
from .base import LocatorDeps, Start, start_turns, student_turns


@dataclass(frozen=True)
class TeacherRolloutsLocator:
    """``teacher_rollouts``: where the teacher's chances drop.

    Rule. For an episode of T turns, let s_j (j = 0..T-1) be the fraction of ``n`` teacher
    continuations that succeed when turns ``0..j-1`` are replayed exactly and the teacher plays
    from turn j on (s_0: from the empty prefix, the episode's first observation), and s_T the
    episode's own outcome (1 or 0: nothing is left to continue). Turn k is the error iff it is
    the first checkable (student, >= start) turn with ``s_k - s_(k+1) >= margin``: the teacher
    could solve the task before the student's action k at a clearly higher rate than after it.
    An episode where the teacher never succeeds (all s = 0) has no located error.

    Cost: ``n`` teacher episodes for each prefix ``start .. T-1`` of each episode, all played
    in one batched ``run_episodes`` call; every teacher action is counted in
    ``deps.stats["teacher_actions"]``.
    """

    name: ClassVar[str] = "teacher_rollouts"
    """The name it is registered under."""
    n: int = 2
    """Teacher continuations per prefix."""
    margin: float = 0.5
    """The least drop in success rate that flags a turn (in (0, 1])."""
    temperature: Optional[float] = None
    """Temperature of the continuations (None: the run's rollout temperature; 0: greedy, when
    ``n = 1`` is enough)."""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"teacher_rollouts n must be at least 1, got {self.n}")
        if not 0.0 < self.margin <= 1.0:
            raise ValueError(f"teacher_rollouts margin must be in (0, 1], got {self.margin}")

    def success_rates(self, episodes: Sequence[Episode], deps: LocatorDeps, starts: Sequence[int]) -> list[list[float]]:
        """Per episode, ``[s_start, ..., s_T]`` (entries before ``start`` are NaN)."""
        actor = deps.teacher
        if isinstance(actor, torch.nn.Module):
            actor = ModelActor(actor, "teacher")
        if not isinstance(actor, (ModelActor, ExpertActor, PolicyActor)):
            raise ConfigError("locator 'teacher_rollouts' needs a local teacher; set teacher.path")
        if self.temperature is not None and isinstance(actor, ModelActor):
            actor = ModelActor(actor.model, actor.producer, temperature=self.temperature, top_p=actor.top_p)
        specs, prefixes, where = [], [], []
        for i, (episode, s) in enumerate(zip(episodes, starts)):
            for j in range(s, episode.num_turns):
                for _ in range(self.n):
                    specs.append((episode.env, episode.seed, episode.options))
                    prefixes.append([FixedTurn(t.action_ids, t.producer, t.action_logprobs) for t in episode.turns[:j]])
                    where.append((i, j))
        rates = [[float("nan")] * e.num_turns + [1.0 if e.success else 0.0] for e in episodes]
        if specs:
            runs = run_episodes(
                specs, actor, deps.tokenizer, max_action_tokens=deps.max_action_tokens,
                temperature=deps.temperature, generator=deps.generator, prefixes=prefixes, registry=deps.registry,
            )
            wins: dict = {}
            for (i, j), run in zip(where, runs):
                wins[(i, j)] = wins.get((i, j), 0) + int(run.success)
                acted = run.turns[j:]
                deps.stats["teacher_actions"] += sum(t.producer == "teacher" for t in acted)
                deps.stats["expert_actions"] += sum(t.producer == "expert" for t in acted)
            for (i, j), w in wins.items():
                rates[i][j] = w / self.n
        return rates

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        starts = start_turns(start, len(episodes))
        # Prefixes are only needed from the first checkable turn on.
        firsts = [(student_turns(e, s) or [e.num_turns])[0] for e, s in zip(episodes, starts)]
        rates = self.success_rates(episodes, deps, firsts)
        out = []
        for episode, s, r in zip(episodes, starts, rates):
            out.append(next((k for k in student_turns(episode, s) if r[k] - r[k + 1] >= self.margin - 1e-9), None))
        return deps.record(out)
