"""``gridnav``: walk to a goal on a grid with walls, one ``move`` call per step.

The first observation shows the whole map, one row after another (``#`` wall, ``.`` open,
``@`` you, ``*`` goal) and the agent's position; later observations only say where the agent
now is (the agent keeps the map in its context, as a multi-turn model would)::

    {"tool": "move", "args": {"dir": "north"}}   -> "you moved north to row 2 col 3"
                                                    "blocked : wall to the north , you are at row 3 col 3"
                                                    "you moved east to row 2 col 4 , goal reached"

Rows grow southwards and columns eastwards. ``horizon`` is the exact length of the shortest
path from start to goal: episodes are drawn until the goal lies exactly that far (in moves,
around the walls). The expert follows a shortest path (BFS distances to the goal, ties broken
in the order north, east, south, west).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from ..tools import Arg, ToolSpec, format_call, toolset
from .base import Outcome, ToolTextEnv, int_option, template_words

Cell = tuple[int, int]
DIRECTIONS: dict[str, Cell] = {"north": (-1, 0), "east": (0, 1), "south": (1, 0), "west": (0, -1)}
"""Direction -> (row step, col step); also the expert's tie-break order."""
MAX_HORIZON = 40
MAX_SIZE = 30
SYMBOLS = {"wall": "#", "open": ".", "you": "@", "goal": "*"}

TOOLS = toolset(ToolSpec("move", (Arg("dir", "string"),), "one step: north, east, south or west"))

TEXT: dict[str, str] = {
    "intro": "grid {size} by {size} : # is wall , . is open , @ is you , * is goal ; {rows} ; "
    "you are at row {row} col {col} . tools : move dir north east south west",
    "row": "row {i} : {cells}",
    "moved": "you moved {dir} to row {row} col {col}",
    "arrived": "you moved {dir} to row {row} col {col} , goal reached",
    "wall": "blocked : wall to the {dir} , you are at row {row} col {col}",
    "edge": "blocked : edge to the {dir} , you are at row {row} col {col}",
    "bad_dir": "error : dir must be north east south west",
}
"""Every observation of this environment, as templates."""


@dataclass(frozen=True)
class Maze:
    """One episode: the grid, the start and the goal."""

    size: int
    """The grid is ``size`` x ``size``."""
    walls: frozenset[Cell]
    """Wall cells (row, col)."""
    start: Cell
    """Where the agent begins."""
    goal: Cell
    """Where it must go."""

    def key(self) -> str:
        """Canonical text of the episode (what the train/eval split hashes)."""
        return f"{self.size}|{sorted(self.walls)}|{self.start}|{self.goal}"

    def inside(self, cell: Cell) -> bool:
        """Whether ``cell`` is on the grid."""
        return 0 <= cell[0] < self.size and 0 <= cell[1] < self.size

    def distances(self, source: Cell) -> dict[Cell, int]:
        """BFS distance (in moves) from ``source`` to every reachable open cell."""
        dist = {source: 0}
        queue = deque([source])
        while queue:
            r, c = queue.popleft()
            for dr, dc in DIRECTIONS.values():
                nxt = (r + dr, c + dc)
                if self.inside(nxt) and nxt not in self.walls and nxt not in dist:
                    dist[nxt] = dist[(r, c)] + 1
                    queue.append(nxt)
        return dist


class GridNavEnv(ToolTextEnv):
    """Grid navigation; ``horizon`` = shortest-path length in moves (1..40).

    :param horizon: exact distance from start to goal.
    :param size: grid side (default ``horizon // 2 + 3``; at least ``horizon // 2 + 2`` so a
        cell that far exists).
    :param wall_density: probability that a cell is a wall (0 .. 0.4; denser grids break into
        small pockets and rarely hold a cell ``horizon`` moves away).
    Other options: see ``ToolTextEnv``.
    """

    name = "gridnav"
    gym_id = "opdplug/GridNav-v0"
    tools = TOOLS
    words = (*SYMBOLS.values(), *DIRECTIONS, *template_words(TEXT.values()))
    horizon_range = (1, MAX_HORIZON)

    def __init__(
        self, *, horizon: int = 4, size: Optional[int] = None, wall_density: float = 0.25, **options: Any
    ) -> None:
        horizon = int_option(self.name, "horizon", horizon, *self.horizon_range)
        side = horizon // 2 + 3 if size is None else size
        self.size = int_option(self.name, "size", side, horizon // 2 + 2, MAX_SIZE)
        if not isinstance(wall_density, (int, float)) or not 0.0 <= wall_density <= 0.4:
            raise ValueError(f"gridnav: wall_density must be a number in 0..0.4, got {wall_density!r}")
        self.wall_density = float(wall_density)
        super().__init__(horizon=horizon, **options)

    def max_observation_chars(self) -> int:
        """The map: two characters per cell plus each row's label, and the sentences around."""
        row = len(TEXT["row"].format(i=self.size, cells=" ".join("#" * self.size))) + len(" ; ")
        return self.size * row + len(TEXT["intro"]) + 20

    # -- episode ----------------------------------------------------------------------------
    def _generate(self, rng: Any) -> Maze:
        n, h = self.size, self.horizon
        for _ in range(100):
            rows, cols = (rng.random((n, n)) < self.wall_density).nonzero()
            walls = frozenset(zip(rows.tolist(), cols.tolist()))
            open_cells = [(r, c) for r in range(n) for c in range(n) if (r, c) not in walls]
            start = open_cells[int(rng.integers(len(open_cells)))] if open_cells else None
            if start is None:
                continue
            far = sorted(cell for cell, d in Maze(n, walls, start, start).distances(start).items() if d == h)
            if far:
                return Maze(n, walls, start, far[int(rng.integers(len(far)))])
        # Practically unreachable: one attempt fails with probability < 0.8 (horizon 40, density
        # 0.4), so all 100 with < 1e-9. An open grid from a corner always has a cell h away.
        return Maze(n, frozenset(), (0, 0), (min(h, n - 1), h - min(h, n - 1)))

    def _begin(self) -> str:
        maze = self.episode
        self._pos = maze.start
        self._to_goal = maze.distances(maze.goal)  # the expert's guide; walls never move
        rows = " ; ".join(TEXT["row"].format(i=r, cells=self._row_cells(r)) for r in range(maze.size))
        return TEXT["intro"].format(size=maze.size, rows=rows, row=self._pos[0], col=self._pos[1])

    def _row_cells(self, r: int) -> str:
        maze = self.episode

        def symbol(cell: Cell) -> str:
            if cell == self._pos:
                return SYMBOLS["you"]
            if cell == maze.goal:
                return SYMBOLS["goal"]
            return SYMBOLS["wall"] if cell in maze.walls else SYMBOLS["open"]

        return " ".join(symbol((r, c)) for c in range(maze.size))

    # -- tools ------------------------------------------------------------------------------
    def _tool_move(self, dir: str) -> Outcome:  # noqa: A002 - the schema's arg name
        d = dir.strip().lower()
        if d not in DIRECTIONS:
            return Outcome(TEXT["bad_dir"], valid=False)
        dr, dc = DIRECTIONS[d]
        nxt = (self._pos[0] + dr, self._pos[1] + dc)
        maze = self.episode
        if not maze.inside(nxt) or nxt in maze.walls:
            # A bump is a legal move that wastes a turn, not a malformed call.
            kind = "edge" if not maze.inside(nxt) else "wall"
            return Outcome(TEXT[kind].format(dir=d, row=self._pos[0], col=self._pos[1]))
        self._pos = nxt
        arrived = nxt == maze.goal
        text = TEXT["arrived" if arrived else "moved"].format(dir=d, row=nxt[0], col=nxt[1])
        return Outcome(text, terminated=arrived, success=arrived)

    # -- expert -----------------------------------------------------------------------------
    def _optimal_cost(self) -> int:
        """BFS distance from here to the goal: an optimal move lowers it by one."""
        return self._to_goal[self._pos]

    def _expert(self) -> str:
        here = self._to_goal[self._pos]
        for d, (dr, dc) in DIRECTIONS.items():
            if self._to_goal.get((self._pos[0] + dr, self._pos[1] + dc)) == here - 1:
                return format_call("move", dir=d)
        raise AssertionError("gridnav: the agent is on the goal")  # pragma: no cover - terminated
