"""The ``expert`` locator: exact, by replaying each episode in its environment."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from ..episodes import Episode
from .base import LocatorDeps, Start, start_turns, student_turns


@dataclass(frozen=True)
class ExpertLocator:
    """``expert``: replay each episode; the first student turn whose action is not optimal in
    effect (``ToolTextEnv.is_optimal``: valid, and solving the task or lowering the optimal
    remaining cost by one). Exact, no model calls."""

    name: ClassVar[str] = "expert"
    """The name it is registered under."""

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        out: list[Optional[int]] = []
        for episode, s in zip(episodes, start_turns(start, len(episodes))):
            check = set(student_turns(episode, s))
            env, found = deps.env(episode), None
            for t, turn in enumerate(episode.turns):
                if t in check and not env.is_optimal(turn.action_text):
                    found = t
                    break
                env.step(turn.action_text)
            out.append(found)
        return deps.record(out)
