"""``first_invalid``: the first student turn the environment rejected, with no model at all.

Cheaper and blunter than the built-in ``expert`` locator: it flags malformed or invalid calls
(and, unless ``include_truncated`` is off, actions cut off by the token budget), never a valid
but wasteful one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from opdplug_agents.locators import LocatorDeps, Start, start_turns, student_turns
from opdplug_agents.rollout import Episode


@dataclass(frozen=True)
class FirstInvalidLocator:
    """Options: ``[rollout.options] locator_options`` of ``agent_score``."""

    name: ClassVar[str] = "first_invalid"

    include_truncated: bool = True
    """Also flag an action that hit the token budget without ``<eos>``."""

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        found: list[Optional[int]] = []
        for episode, first in zip(episodes, start_turns(start, len(episodes))):
            bad = (t for t in student_turns(episode, first)
                   if not episode.turns[t].valid or (self.include_truncated and episode.turns[t].truncated))
            found.append(next(bad, None))
        return deps.record(found)
