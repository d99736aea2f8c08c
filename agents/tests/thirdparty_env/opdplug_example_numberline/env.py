"""``numberline``: walk to a goal number with ``up`` and ``down``, then say ``stop``.

::

    {"tool": "up", "args": {}}     -> "at : 13"
    {"tool": "down", "args": {}}   -> "at : 11"
    {"tool": "stop", "args": {}}   -> "stopped at the goal" | "stopped away from the goal"

``horizon`` is the distance between start and goal: the expert (step toward the goal, stop on
it) takes exactly ``horizon + 1`` calls, and every wrong step costs two more. Deterministic in
the reset seed, like every ``ToolTextEnv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opdplug_agents.envs import Outcome, ToolTextEnv, template_words
from opdplug_agents.tools import ToolSpec, format_call, toolset

LOW, HIGH = 0, 99
"""The ends of the line (the numbers the agent vocabulary has words for)."""

TOOLS = toolset(
    ToolSpec("up", (), "add one"),
    ToolSpec("down", (), "take one away"),
    ToolSpec("stop", (), "you are at the goal; ends the episode"),
)

TEXT: dict[str, str] = {
    "intro": "walk from {at} to {goal} on the number line . up adds one , down takes one away . "
    "call stop at the goal . tools : up , down , stop",
    "at": "at : {at}",
    "edge": "error : the line ends at 0 and 99",
    "arrived": "stopped at the goal",
    "missed": "stopped away from the goal",
}
"""Every observation, as templates."""


@dataclass(frozen=True)
class Walk:
    """One episode: where the agent starts and where it must stop."""

    start: int
    goal: int

    def key(self) -> str:
        """Canonical text of the episode (what the train/eval split hashes)."""
        return f"{self.start} {self.goal}"


class NumberLineEnv(ToolTextEnv):
    """Walking on the number line ``0 .. 99``; ``horizon`` = distance to the goal (1..30)."""

    name = "numberline"
    gym_id = ""  # not registered with gymnasium: the opdplug registry is enough
    tools = TOOLS
    words = tuple(template_words(TEXT.values()))
    horizon_range = (1, 30)

    def _generate(self, rng: Any) -> Walk:
        goal = int(rng.integers(LOW, HIGH + 1))
        sides = [s for s in (goal - self.horizon, goal + self.horizon) if LOW <= s <= HIGH]
        return Walk(start=sides[int(rng.integers(len(sides)))], goal=goal)

    def _begin(self) -> str:
        self._at = self.episode.start
        return TEXT["intro"].format(at=self._at, goal=self.episode.goal)

    def _move(self, step: int) -> Outcome:
        if not LOW <= self._at + step <= HIGH:
            return Outcome(TEXT["edge"], valid=False)
        self._at += step
        return Outcome(TEXT["at"].format(at=self._at))

    def _tool_up(self) -> Outcome:
        return self._move(1)

    def _tool_down(self) -> Outcome:
        return self._move(-1)

    def _tool_stop(self) -> Outcome:
        arrived = self._at == self.episode.goal
        return Outcome(TEXT["arrived" if arrived else "missed"], terminated=True, success=arrived)

    def _optimal_cost(self) -> int:
        """Steps left to the goal, plus the ``stop`` call."""
        return abs(self.episode.goal - self._at) + 1

    def _expert(self) -> str:
        if self._at == self.episode.goal:
            return format_call("stop")
        return format_call("up" if self._at < self.episode.goal else "down")
