"""What every text/tool environment shares: spaces, turns, splits, replay, experts, vocabulary.

An environment subclasses ``ToolTextEnv`` and provides:

* ``tools``: its tool schemas (``opdplug_agents.tools.ToolSpec``) by name;
* ``_generate(rng)``: a random episode (a frozen dataclass with a ``key()`` string);
* ``_begin()``: set the dynamic state from ``self.episode``, return the first observation;
* ``_tool_<name>(**args)`` for each tool: apply a validated call, return an ``Outcome``;
* ``_expert()``: the expert's action text from the current state;
* ``_optimal_cost()`` (optional): the fewest actions to success from the current state, which
  lets ``is_optimal`` accept every optimal action (ties), not only the expert's own;
* ``words``: the words its observations use besides numbers and the tool format.

Observations are one line of words separated by single spaces (punctuation such as ``:`` and
``,`` is a word of its own), so they split the same way by ``str.split`` and by the tiny
tokenizer. Numbers are whole decimal words ``0`` ... ``99`` (a minus sign is the word ``-``).
Actions are tool calls in the JSON format of ``opdplug_agents.tools``.
"""
from __future__ import annotations

import hashlib
import numbers
import string
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Optional

import gymnasium
from gymnasium import spaces

from ..tools import MESSAGES, NO_ARGS, TYPE_PHRASES, ToolSpec, parse_call, pretokenize
from ..tools import vocabulary as tool_vocabulary

CHARSET = string.ascii_letters + string.digits + string.punctuation + " "
"""Characters of both text spaces: printable ASCII without line breaks (gymnasium's default
charset has no space and no punctuation)."""
MAX_ACTION_CHARS = 200
"""Longest action (the action space's ``max_length``; longer ones are error observations)."""
MAX_NUMBER = 99
"""Numbers in observations and expert actions lie in ``-MAX_NUMBER .. MAX_NUMBER``."""
NUMBER_WORDS: tuple[str, ...] = tuple(str(n) for n in range(MAX_NUMBER + 1))
SPLITS = ("train", "eval")
EPISODE_OVER = "error : the episode is over"
BASE_WORDS: tuple[str, ...] = (*NUMBER_WORDS, "-", *pretokenize(EPISODE_OVER))


def split_of(env_name: str, key: str, eval_mod: int = 10) -> str:
    """``"eval"`` for one episode in ``eval_mod`` (by a hash of its content), else ``"train"``.

    Depends on the episode's content alone, so train and eval never share an episode whatever
    the seeds (SHA-256: stable across processes and machines, unlike ``hash``).
    """
    digest = hashlib.sha256(f"{env_name}:{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % eval_mod == 0 else "train"


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def template_words(templates: Iterable[str]) -> list[str]:
    """The fixed words of observation templates (``{fields}`` left out: their values are listed
    separately, e.g. names and numbers)."""
    return sorted({w for t in templates for w in pretokenize(t.format_map(_Blank()))})


def int_option(env: str, name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in ``lo..hi`` (numpy integers welcome, bools not), else a one-line
    ``ValueError`` naming the environment and the option."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and lo <= value <= hi:
        return int(value)
    raise ValueError(f"{env}: {name} must be an integer in {lo}..{hi}, got {value!r}")


def num(n: int) -> str:
    """``n`` as observation words (``"-"`` and the digits as one word), checked to be in range."""
    if abs(n) > MAX_NUMBER:
        raise ValueError(f"{n} is outside the observation vocabulary (|n| <= {MAX_NUMBER})")
    return f"- {-n}" if n < 0 else str(n)


@dataclass(frozen=True)
class Outcome:
    """What one tool call did."""

    observation: str
    """The text the agent sees next."""
    terminated: bool = False
    """The episode ended (answer given, goal reached, done called)."""
    success: bool = False
    """The task was solved by this call."""
    valid: bool = True
    """False for error observations (malformed call, bad argument value)."""


class ToolTextEnv(gymnasium.Env):
    """Base class: a multi-turn environment with text observations and tool-call actions.

    Options common to all environments (keyword-only):

    :param horizon: the difficulty knob; its meaning is the subclass's (always "more steps").
    :param split: ``"train"`` or ``"eval"``: which hash-split episodes ``reset`` draws from
        (``reset(options={"split": ...})`` overrides it for one episode).
    :param max_turns: truncate after this many actions (default ``default_max_turns(horizon)``).
    :param eval_mod: one episode in ``eval_mod`` belongs to eval.
    :param fatal_errors: a wrong move cannot be undone: any action that is not optimal
        (``is_optimal``'s rule: invalid, malformed, a bump or wasted call, a detour) ends the
        episode at once, failed (``terminated``, no success, ``info["fatal_error"]``). Its
        observation is the one the action produced anyway, so the vocabulary is unchanged.
        Default ``False``: a detour can still reach the goal.
    :param render_mode: ``None`` only: the observations are the text a human would read.

    ``info`` always holds ``success`` (solved, apart from ``terminated``/``truncated``),
    ``turn``, ``valid_action``, ``horizon`` and ``split``; ``reset`` adds ``episode_key``
    (and, with ``fatal_errors``, ``fatal_error``).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    name: ClassVar[str] = ""
    gym_id: ClassVar[str] = ""
    tools: ClassVar[Mapping[str, ToolSpec]] = {}
    words: ClassVar[tuple[str, ...]] = ()
    horizon_range: ClassVar[tuple[int, int]] = (1, 10)

    def __init__(
        self,
        *,
        horizon: int = 2,
        split: str = "train",
        max_turns: Optional[int] = None,
        eval_mod: int = 10,
        fatal_errors: bool = False,
        render_mode: Optional[str] = None,
    ) -> None:
        self.horizon = int_option(self.name, "horizon", horizon, *self.horizon_range)
        _check_split(split)
        if render_mode is not None:
            raise ValueError(f"{self.name}: render_mode must be None (observations are text), got {render_mode!r}")
        if not isinstance(fatal_errors, bool):
            raise ValueError(f"{self.name}: fatal_errors must be true or false, got {fatal_errors!r}")
        self.fatal_errors = fatal_errors
        self.split = split
        self.eval_mod = int_option(self.name, "eval_mod", eval_mod, 2, 10**6)
        turns = self.default_max_turns(self.horizon) if max_turns is None else max_turns
        self.max_turns = int_option(self.name, "max_turns", turns, 1, 10**6)
        self.render_mode = render_mode
        self.action_space = spaces.Text(MAX_ACTION_CHARS, min_length=0, charset=CHARSET)
        self.observation_space = spaces.Text(self.max_observation_chars(), min_length=1, charset=CHARSET)
        self.episode: Any = None
        """The current episode (frozen dataclass); ``replay`` restarts from it."""
        self.actions: list[str] = []
        """The actions taken since the episode (re)started."""
        self._episode_split = split
        self._turn = 0
        self._terminated = self._truncated = self._success = self._fatal = False
        self._handlers = {name: getattr(self, f"_tool_{name}") for name in self.tools}

    # -- for subclasses ---------------------------------------------------------------------
    def default_max_turns(self, horizon: int) -> int:
        """Turn limit when none is given: twice the expert's episode length plus slack."""
        return 2 * horizon + 4

    def max_observation_chars(self) -> int:
        """Upper bound on observation length (the observation space's ``max_length``)."""
        return 256

    def _generate(self, rng: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _begin(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _expert(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _optimal_cost(self) -> Optional[int]:
        """The fewest actions from the current state to success, as the expert (who knows the
        episode) counts them; None when the environment cannot tell (``is_optimal`` then compares
        the call with the expert's)."""
        return None

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Draw an episode of the split (rejection sampling on ``split_of``) and start it.

        Deterministic in ``seed``; ``options`` may hold ``split`` only.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        split = options.pop("split", self.split)
        if options:
            raise ValueError(f"{self.name}: unknown reset options {sorted(options)}; allowed: ['split']")
        _check_split(split)
        for _ in range(1000 * self.eval_mod):
            episode = self._generate(self.np_random)
            if split_of(self.name, episode.key(), self.eval_mod) == split:
                break
        else:  # pragma: no cover - only for a degenerate, tiny episode space
            raise RuntimeError(f"{self.name}: no {split!r} episode found at horizon {self.horizon}")
        self.episode = episode
        self._episode_split = split
        obs = self._restart()
        info = self._info(valid=True)
        info["episode_key"] = episode.key()
        return obs, info

    def step(self, action: str):
        """Apply one action; malformed or invalid calls give an error observation (and use a turn)."""
        if self.episode is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        if self._terminated or self._truncated:
            return EPISODE_OVER, 0.0, self._terminated, self._truncated, self._info(valid=False)
        reference = self._optimality_reference() if self.fatal_errors else None
        self.actions.append(action)
        self._turn += 1
        call = parse_call(action, self.tools, max_chars=MAX_ACTION_CHARS)
        if isinstance(call, str):
            outcome = Outcome(call, valid=False)
        else:
            outcome = self._handlers[call.tool](**call.args)
        if self.fatal_errors and not outcome.terminated and not self._moved_optimally(call, outcome, reference):
            self._fatal, outcome = True, Outcome(outcome.observation, terminated=True, success=False, valid=outcome.valid)
        self._success = outcome.success
        self._terminated = outcome.terminated
        self._truncated = not outcome.terminated and self._turn >= self.max_turns
        reward = 1.0 if outcome.success else 0.0
        return outcome.observation, reward, self._terminated, self._truncated, self._info(outcome.valid)

    def _optimality_reference(self) -> tuple:
        """What ``fatal_errors`` compares a move with: the optimal cost before it, or (where the
        environment does not define one) the expert's call."""
        cost = self._optimal_cost()
        return (cost, None) if cost is not None else (None, parse_call(self._expert(), self.tools))

    def _moved_optimally(self, call: Any, outcome: Outcome, reference: tuple) -> bool:
        """``is_optimal``'s rule for a move just applied that did not end the episode."""
        if isinstance(call, str) or not outcome.valid:
            return False
        if outcome.success:
            return True
        cost, expert = reference
        return self._optimal_cost() == cost - 1 if cost is not None else call == expert

    def render(self) -> None:
        """Nothing to draw: the observations are already the text a human reads."""
        return None

    # -- experts and replay -----------------------------------------------------------------
    def expert_action(self) -> str:
        """The exact action text the expert takes from the current state (an optimal one).

        :raises RuntimeError: before ``reset`` or once the episode is over.
        """
        if self.episode is None or self._terminated or self._truncated:
            raise RuntimeError(f"{self.name}: no expert action outside a running episode")
        return self._expert()

    def optimal_cost(self) -> Optional[int]:
        """The optimal remaining cost: the fewest actions to success from the current state
        (the expert's episode length from here), or None if the environment does not define it.

        :raises RuntimeError: before ``reset`` or once the episode is over.
        """
        if self.episode is None or self._terminated or self._truncated:
            raise RuntimeError(f"{self.name}: no optimal cost outside a running episode")
        return self._optimal_cost()

    def is_optimal(self, action: str) -> bool:
        """Whether ``action``, taken now, is an optimal move; the state is left unchanged.

        With ``optimal_cost`` defined: the call is valid and either solves the task or leaves
        the episode running with the optimal cost down by exactly one (so every tie counts:
        any shortest-path move in gridnav, any swap that removes one inversion in swapsort).
        Otherwise: the call parses to the same tool call as the expert's (formatting aside).
        Malformed and invalid calls, bumps and wasted calls are never optimal.

        :raises RuntimeError: before ``reset`` or once the episode is over.
        """
        before = self.optimal_cost()
        if before is None:
            call, expert = parse_call(action, self.tools, max_chars=MAX_ACTION_CHARS), parse_call(self._expert(), self.tools)
            return not isinstance(call, str) and call == expert
        taken = list(self.actions)
        try:
            _, _, terminated, _, info = self.step(action)
            if not info["valid_action"]:
                return False
            if info["success"]:
                return True
            return not terminated and self._optimal_cost() == before - 1
        finally:
            self.replay(taken)  # deterministic: back to exactly the state before

    def replay(self, actions: list[str]) -> str:
        """Restart the current episode (no new draw, ``np_random`` untouched), apply ``actions``
        and return the last observation (the first one for an empty list)."""
        if self.episode is None:
            raise RuntimeError(f"{self.name}: call reset() before replay()")
        obs = self._restart()
        for action in list(actions):
            obs = self.step(action)[0]
        return obs

    @property
    def turn(self) -> int:
        """Actions taken in this episode."""
        return self._turn

    @property
    def episode_over(self) -> bool:
        """The episode ended (terminated or truncated): no more actions are taken."""
        return self._terminated or self._truncated

    @property
    def solved(self) -> bool:
        """The last action solved the task (``info["success"]``)."""
        return self._success

    # -- vocabulary -------------------------------------------------------------------------
    @classmethod
    def vocabulary(cls) -> list[str]:
        """Every word (tokenizer pre-token) an observation or expert action can contain, sorted."""
        return sorted({*BASE_WORDS, *tool_vocabulary(cls.tools), *cls.words})

    # -- internals --------------------------------------------------------------------------
    def _restart(self) -> str:
        self.actions = []
        self._turn = 0
        self._terminated = self._truncated = self._success = self._fatal = False
        return self._begin()

    def _info(self, valid: bool) -> dict[str, Any]:
        # A new dict each call: callers keep infos (gymnasium's checker tests that they may).
        info = {
            "success": self._success,
            "turn": self._turn,
            "valid_action": valid,
            "horizon": self.horizon,
            "split": self._episode_split,
        }
        if self.fatal_errors:
            info["fatal_error"] = self._fatal  # the episode ended on a wrong move
        return info

    @classmethod
    def _tool_error_chars(cls) -> int:
        """An upper bound on the length of the tool parser's error messages for these tools."""
        longest = {
            "tools": " ".join(cls.tools),
            "tool": max(cls.tools, key=len, default=""),
            "arg": max((a for s in cls.tools.values() for a in s.arg_names), key=len, default=""),
            "args": max([NO_ARGS, *(" ".join(s.arg_names) for s in cls.tools.values())], key=len),
            "type": max(TYPE_PHRASES.values(), key=len),
        }
        return max(len(m.format(**longest)) for m in MESSAGES.values())


def _check_split(split: Any) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
