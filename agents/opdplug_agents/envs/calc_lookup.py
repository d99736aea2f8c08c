"""``calc_lookup``: multi-hop tool use over a lookup table and a calculator.

A table of people, each with a friend (the friends form one random cycle) and a number of coins
(1..9). The question names a start person and a count ``horizon``: the total coins of the start
person, their friend, the friend's friend, ... (``horizon`` people). Each lookup reveals the next
name, so the ``horizon`` lookups are dependent; then a calculator call adds the coins and an
``answer`` call ends the episode (success iff the value is right).

Tools (the table is only reachable through the fixed ``lookup`` tool, never by a query language)::

    {"tool": "lookup", "args": {"name": "ann"}}      -> "ann : friend bob , coins 7"
    {"tool": "calc", "args": {"expr": "7 + 3 + 5"}}  -> "result : 15"
    {"tool": "answer", "args": {"value": 15}}        -> "correct" | "wrong"   (ends the episode)

The expert looks up the chain in order, adds the coins with one ``calc`` call (skipped when
there is a single person) and answers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .. import calculator
from ..tools import Arg, ToolSpec, format_call, toolset
from .base import MAX_NUMBER, Outcome, ToolTextEnv, int_option, num, template_words

NAMES: tuple[str, ...] = (
    "ann", "bob", "cal", "dee", "eve", "fay", "gus", "hal",
    "ivy", "jon", "kim", "lee", "max", "ned", "oli", "pam",
)
"""Everyone who can appear in a table."""
MAX_COINS = 9
MAX_HOPS = MAX_NUMBER // MAX_COINS  # the total must stay a number word (<= 99)

TOOLS = toolset(
    ToolSpec("lookup", (Arg("name", "string"),), "a person's friend and coins"),
    ToolSpec("calc", (Arg("expr", "string"),), "integer arithmetic: + - * // % ( )"),
    ToolSpec("answer", (Arg("value", "integer"),), "the final answer; ends the episode"),
)

TEXT: dict[str, str] = {
    "question": "find the total coins of {count} people : start with {start} , then each next "
    "person is the friend of the one before . tools : lookup name , calc expr , answer value",
    "question_one": "find the coins of 1 person : {start} . tools : lookup name , calc expr , answer value",
    "row": "{name} : friend {friend} , coins {coins}",
    "unknown_name": "error : unknown name",
    "result": "result : {value}",
    "calc_error": "error : calc {message}",
    "out_of_range": "error : result out of range",
    "correct": "correct",
    "wrong": "wrong",
}
"""Every observation of this environment, as templates."""
_CALC_WORDS = [w for m in calculator.MESSAGES for w in m.split()]


@dataclass(frozen=True)
class Table:
    """One episode: the table and the question."""

    names: tuple[str, ...]
    """The people in the table, in table order."""
    friend: tuple[int, ...]
    """``friend[i]``: index (into ``names``) of person i's friend."""
    coins: tuple[int, ...]
    """``coins[i]``: person i's coins."""
    start: int
    """Index of the person the question starts with."""
    count: int
    """How many people the total covers (the horizon)."""

    def chain(self) -> list[int]:
        """Indices of the ``count`` people of the question, in lookup order."""
        out = [self.start]
        while len(out) < self.count:
            out.append(self.friend[out[-1]])
        return out

    def total(self) -> int:
        """The right answer."""
        return sum(self.coins[i] for i in self.chain())

    def key(self) -> str:
        """Canonical text of the episode (what the train/eval split hashes). Rows sorted by name:
        the table order is invisible to the agent, so it must not tell two episodes apart."""
        rows = ",".join(sorted(f"{n}>{self.names[f]}:{c}" for n, f, c in zip(self.names, self.friend, self.coins)))
        return f"{rows}|start={self.names[self.start]}|count={self.count}"


class CalcLookupEnv(ToolTextEnv):
    """Multi-hop lookups plus a calculator; ``horizon`` = people to chain through (1..11).

    :param horizon: people in the chain = dependent lookups needed.
    :param num_people: table size (default ``max(horizon + 2, 6)``, at most 16); the people
        beyond the chain are distractors.
    Other options: see ``ToolTextEnv``.
    """

    name = "calc_lookup"
    gym_id = "opdplug/CalcLookup-v0"
    tools = TOOLS
    words = (*NAMES, *_CALC_WORDS, "+", *template_words(TEXT.values()))  # "+": the expert's sums
    horizon_range = (1, MAX_HOPS)

    def __init__(self, *, horizon: int = 2, num_people: Optional[int] = None, **options: Any) -> None:
        horizon = int_option(self.name, "horizon", horizon, *self.horizon_range)
        people = max(horizon + 2, 6) if num_people is None else num_people
        self.num_people = int_option(self.name, "num_people", people, max(horizon, 2), len(NAMES))
        super().__init__(horizon=horizon, **options)

    def default_max_turns(self, horizon: int) -> int:
        """Expert length is ``horizon + 2``; allow as much again for retries."""
        return 2 * (horizon + 2)

    def max_observation_chars(self) -> int:
        """The question is the longest observation."""
        return max(len(TEXT["question"]) + 10, self._tool_error_chars())

    # -- episode ----------------------------------------------------------------------------
    def _generate(self, rng: Any) -> Table:
        picked = rng.choice(len(NAMES), size=self.num_people, replace=False)
        names = tuple(NAMES[i] for i in picked)
        # Friends form one cycle in a random order: any chain of up to num_people is distinct.
        order = rng.permutation(self.num_people).tolist()
        friend = [0] * self.num_people
        for a, b in zip(order, order[1:] + order[:1]):
            friend[a] = b
        coins = tuple(int(c) for c in rng.integers(1, MAX_COINS + 1, size=self.num_people))
        start = int(rng.integers(self.num_people))
        return Table(names, tuple(friend), coins, start, self.horizon)

    def _begin(self) -> str:
        self._looked_up: set[str] = set()
        self._results: set[int] = set()
        self._index = {n: i for i, n in enumerate(self.episode.names)}
        t = self.episode
        template = TEXT["question"] if t.count > 1 else TEXT["question_one"]
        return template.format(count=t.count, start=t.names[t.start])

    # -- tools ------------------------------------------------------------------------------
    def _tool_lookup(self, name: str) -> Outcome:
        i = self._index.get(name.strip().lower())
        if i is None:
            return Outcome(TEXT["unknown_name"], valid=False)
        t = self.episode
        self._looked_up.add(t.names[i])
        return Outcome(TEXT["row"].format(name=t.names[i], friend=t.names[t.friend[i]], coins=t.coins[i]))

    def _tool_calc(self, expr: str) -> Outcome:
        try:
            value = calculator.evaluate(expr)
        except calculator.CalcError as exc:
            return Outcome(TEXT["calc_error"].format(message=exc), valid=False)
        if abs(value) > MAX_NUMBER:  # keeps observations inside the number words
            return Outcome(TEXT["out_of_range"], valid=False)
        self._results.add(value)
        return Outcome(TEXT["result"].format(value=num(value)))

    def _tool_answer(self, value: int) -> Outcome:
        right = value == self.episode.total()
        return Outcome(TEXT["correct" if right else "wrong"], terminated=True, success=right)

    # -- expert -----------------------------------------------------------------------------
    def _optimal_cost(self) -> int:
        """Chain members not looked up yet, plus one ``calc`` unless the total is already a
        result (or there is one person), plus the ``answer``. Looking up a distractor or a name
        twice, or a partial sum, leaves it unchanged: not optimal."""
        t = self.episode
        chain = t.chain()
        missing = sum(t.names[i] not in self._looked_up for i in chain)
        calc = int(len(chain) > 1 and t.total() not in self._results)
        return missing + calc + 1

    def _expert(self) -> str:
        t = self.episode
        chain = t.chain()
        for i in chain:
            if t.names[i] not in self._looked_up:
                return format_call("lookup", name=t.names[i])
        total = t.total()
        if len(chain) > 1 and total not in self._results:
            return format_call("calc", expr=" + ".join(str(t.coins[i]) for i in chain))
        return format_call("answer", value=total)
