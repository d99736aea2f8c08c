"""``swapsort``: sort a list of numbers by swapping neighbours, then say ``done``.

::

    {"tool": "swap", "args": {"i": 1}}   -> "list : 7 13 42"   (swaps the items at i and i + 1)
    {"tool": "done", "args": {}}         -> "done , the list is sorted" | "done , the list is not sorted"

``horizon`` is the number of inversions of the starting list: exactly the number of swaps an
optimal solver needs (each neighbour swap changes the inversion count by one), so the expert's
episode is ``horizon`` swaps plus ``done``. A wrong swap costs two turns to undo, which is
what makes long horizons hard. The expert swaps the leftmost out-of-order pair (bubble sort).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..tools import Arg, ToolSpec, format_call, toolset
from .base import MAX_NUMBER, Outcome, ToolTextEnv, int_option, template_words

MAX_LENGTH = 20
MAX_HORIZON = 45

TOOLS = toolset(
    ToolSpec("swap", (Arg("i", "integer"),), "swap the items at positions i and i + 1 (from 0)"),
    ToolSpec("done", (), "the list is sorted; ends the episode"),
)

TEXT: dict[str, str] = {
    "intro": "sort the list in increasing order . swap i swaps the items at i and i + 1 , "
    "counting from 0 . call done when it is sorted . list : {items} . tools : swap i , done",
    "list": "list : {items}",
    "bad_index": "error : i must be from 0 to {last}",
    "sorted": "done , the list is sorted",
    "unsorted": "done , the list is not sorted",
}
"""Every observation of this environment, as templates."""


def inversions(items: tuple[int, ...]) -> int:
    """Pairs out of order: the fewest neighbour swaps that sort ``items``."""
    return sum(a > b for i, a in enumerate(items) for b in items[i + 1 :])


def default_length(horizon: int) -> int:
    """The shortest list with room for ``2 * horizon`` inversions (at least 3 items): some slack,
    so that many lists have exactly ``horizon``."""
    n = 3
    while n * (n - 1) // 2 < 2 * horizon:
        n += 1
    return n


@dataclass(frozen=True)
class Shuffle:
    """One episode: the starting list."""

    items: tuple[int, ...]
    """Distinct numbers in 0..99, with exactly ``horizon`` inversions."""

    def key(self) -> str:
        """Canonical text of the episode (what the train/eval split hashes)."""
        return " ".join(map(str, self.items))


class SwapSortEnv(ToolTextEnv):
    """Sorting by neighbour swaps; ``horizon`` = inversions = optimal number of swaps (1..45).

    :param horizon: inversions of the starting list.
    :param length: items in the list (default ``default_length(horizon)``; must have room for
        ``horizon`` inversions, at most 20).
    Other options: see ``ToolTextEnv``.
    """

    name = "swapsort"
    gym_id = "opdplug/SwapSort-v0"
    tools = TOOLS
    words = tuple(template_words(TEXT.values()))
    horizon_range = (1, MAX_HORIZON)

    def __init__(self, *, horizon: int = 3, length: Optional[int] = None, **options: Any) -> None:
        horizon = int_option(self.name, "horizon", horizon, *self.horizon_range)
        shortest = next(n for n in range(2, MAX_LENGTH + 1) if n * (n - 1) // 2 >= horizon)
        self.length = int_option(
            self.name, "length", default_length(horizon) if length is None else length, shortest, MAX_LENGTH
        )
        super().__init__(horizon=horizon, **options)

    def max_observation_chars(self) -> int:
        """The first observation, with two-digit items."""
        return len(TEXT["intro"]) + 3 * self.length + 10

    # -- episode ----------------------------------------------------------------------------
    def _generate(self, rng: Any) -> Shuffle:
        n = self.length
        values = sorted(int(v) for v in rng.choice(MAX_NUMBER + 1, size=n, replace=False))
        # A Lehmer code summing to horizon: code[i] <= n - 1 - i later items are smaller than
        # item i, so the permutation it decodes to has exactly sum(code) inversions.
        code = [0] * n
        for _ in range(self.horizon):
            room = [i for i in range(n) if code[i] < n - 1 - i]
            code[room[int(rng.integers(len(room)))]] += 1
        items = [values.pop(c) for c in code]
        return Shuffle(tuple(items))

    def _begin(self) -> str:
        self._items = list(self.episode.items)
        return TEXT["intro"].format(items=self._text())

    def _text(self) -> str:
        return " ".join(map(str, self._items))

    def _is_sorted(self) -> bool:
        return all(a < b for a, b in zip(self._items, self._items[1:]))

    # -- tools ------------------------------------------------------------------------------
    def _tool_swap(self, i: int) -> Outcome:
        if not 0 <= i < len(self._items) - 1:
            return Outcome(TEXT["bad_index"].format(last=len(self._items) - 2), valid=False)
        self._items[i], self._items[i + 1] = self._items[i + 1], self._items[i]
        return Outcome(TEXT["list"].format(items=self._text()))

    def _tool_done(self) -> Outcome:
        ok = self._is_sorted()
        return Outcome(TEXT["sorted" if ok else "unsorted"], terminated=True, success=ok)

    # -- expert -----------------------------------------------------------------------------
    def _optimal_cost(self) -> int:
        """Inversions left (one swap each) plus the ``done`` call."""
        return inversions(tuple(self._items)) + 1

    def _expert(self) -> str:
        for i, (a, b) in enumerate(zip(self._items, self._items[1:])):
            if a > b:
                return format_call("swap", i=i)
        return format_call("done")
