"""``gymnasium``: any gymnasium environment with text observations and text actions, by id.

Nothing of opdplug needs to be in the game. The config names its id, a module to import for
its ``gymnasium.register``, and its constructor keyword arguments as plain keys::

    [task.options]
    env = "gymnasium"
    [task.options.env_options]
    id = "TinyQuest-v0"          # gymnasium id
    module = "tinyquest"         # imported first (its gymnasium.register)
    success_key = "won"          # info key of success
    expert_key = "expert"        # info key of the expert's next command
    rooms = 3                    # any other key: a keyword argument of gymnasium.make

The adapter protocol (every key optional but ``id``):

``observation_key`` / ``observation``  observation -> message: the observation itself when it
    is a string, ``obs[observation_key]``, or a registered callable ``fn(obs, info) -> str``
``action``        action text -> environment action: the text itself, or a registered callable
    ``fn(text, env) -> action`` (e.g. an index of a ``Discrete`` space)
``success_key``   ``info[success_key]`` is success ("" : a positive reward at termination)
``expert_key`` / ``expert``  the expert's next action text: ``info[expert_key]`` of the last
    ``reset``/``step``, or a registered callable ``fn(env, info) -> str``
``replay``        true (default): an episode can be replayed by resetting with its seed and
    stepping its actions again (gymnasium's determinism contract); false: it cannot
``horizon_key`` / ``horizon_range``  the keyword argument that the task's horizon sets, and
    its range (default: no horizon, range 1..1)
``episode_key``   info key naming the episode (default: the first observation), which the
    train/eval split hashes
``max_turns``, ``eval_mod``  turn limit (default 50) and one episode in ``eval_mod`` held out
``vector``        how a batch of episodes steps (``run_episodes``): ``"sync"`` (default, what
    ``gymnasium.make_vec`` does for a game without its own vector entry point) through one
    ``gymnasium.vector.SyncVectorEnv``, ``"async"`` through an ``AsyncVectorEnv`` (one process per
    episode of the batch), ``"none"``: one plain instance per episode (``gym_vector``)

Callables are registered through ``opd_register_env_adapters`` (``register(name, fn)``). A
method that needs what a game does not provide (an expert, replay) refuses with one line
naming it (``MissingCapability``).
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar, Optional

import gymnasium

from opdplug.errors import ConfigError

from .base import SPLITS, split_of
from .gym_vector import VectorGroup, make_game

ENV_ADAPTERS = "env_adapters"
"""The registry kind of adapter callables (hookspec ``opd_register_env_adapters``)."""
EPISODE_OVER = "the episode is over"
"""The observation of a step after the end (not sent to the game)."""
DEFAULT_MAX_TURNS = 50
"""Turn limit when the config gives none."""
VECTOR_MODES = ("sync", "async", "none")
"""Values of ``vector``; the first is the default."""


class MissingCapability(ConfigError):
    """A method needs something the environment does not provide (one line, names it)."""


def _callable(name: str, registry: Any, key: str) -> Any:
    from ..registries import registry_or_installed

    return registry_or_installed(registry).get(ENV_ADAPTERS, name, key) if name else None


class GymnasiumTextEnv:
    """A gymnasium text game behind the API ``opdplug_agents`` uses (see the module docstring)."""

    name: ClassVar[str] = "gymnasium"
    """The name it is registered under."""
    tools: ClassVar[Optional[dict]] = None
    """No tool schemas: actions are free text."""

    def __init__(self, *, id: str, module: str = "", horizon: int = 1, split: str = "train",
                 max_turns: Optional[int] = None, eval_mod: int = 10, horizon_key: str = "",
                 horizon_range: Any = (1, 1), success_key: str = "success", expert_key: str = "",
                 expert: str = "", observation_key: str = "", observation: str = "", action: str = "",
                 replay: bool = True, episode_key: str = "", vector: str = VECTOR_MODES[0], registry: Any = None,
                 _make: bool = True, **kwargs: Any) -> None:
        if module:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"gymnasium: module = {module!r} cannot be imported ({exc})") from None
        lo, hi = self.horizon_range_for({"horizon_range": horizon_range})
        if not lo <= horizon <= hi:
            raise ValueError(f"gymnasium {id}: horizon must be in {lo}..{hi}, got {horizon}")
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if vector not in VECTOR_MODES:
            raise ValueError(f"gymnasium {id}: vector must be one of {', '.join(VECTOR_MODES)}, got {vector!r}")
        if horizon_key:
            kwargs[horizon_key] = horizon
        self.module, self.vector, self.gym_kwargs = module, vector, dict(kwargs)
        self.env: Any = None
        """The game (a vector slot's: its sub-environment, or a stand-in with its spaces)."""
        if _make:
            try:
                self.env = make_game("", id, kwargs)
            except gymnasium.error.Error as exc:
                raise ValueError(f"gymnasium: {str(exc).splitlines()[0]}") from None
        self.id, self.horizon, self.split, self.eval_mod = id, horizon, split, int(eval_mod)
        self.max_turns = int(max_turns or DEFAULT_MAX_TURNS)
        self.keys = {"success": success_key, "expert": expert_key, "observation": observation_key, "episode": episode_key}
        self.expert_fn = _callable(expert, registry, "env_options.expert")
        self.observation_fn = _callable(observation, registry, "env_options.observation")
        self.action_fn = _callable(action, registry, "env_options.action")
        self.can_replay = bool(replay)
        self.episode: Optional[int] = None
        """The seed the game was reset with (what ``replay`` resets with again)."""
        self.actions: list[str] = []
        self.info: dict = {}
        self.episode_over = self.solved = False

    @staticmethod
    def horizon_range_for(options: dict) -> tuple[int, int]:
        """The horizon range these options allow (``horizon_range``, default 1..1)."""
        lo, hi = options.get("horizon_range", (1, 1))
        return int(lo), int(hi)

    @classmethod
    def vocabulary(cls) -> list[str]:
        """No closed vocabulary: a game's text needs a real (subword) tokenizer."""
        return []

    # -- gymnasium API ------------------------------------------------------------------------
    def _message(self, obs: Any, info: dict) -> str:
        if self.observation_fn is not None:
            return str(self.observation_fn(obs, info))
        if self.keys["observation"]:
            return str(obs[self.keys["observation"]])
        return obs if isinstance(obs, str) else str(obs)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """The first episode of the split at or after ``seed`` (seeds tried in a fixed order)."""
        split = dict(options or {}).get("split", self.split)
        for attempt in range(self.max_attempts):
            s = self.attempt_seed(seed, attempt)
            obs, info = self.env.reset(seed=s)
            started = self.start(s, obs, info, split)
            if started is not None:
                return started
        raise self.no_episode(split)

    @property
    def max_attempts(self) -> int:
        """Seeds tried by ``reset`` before giving up."""
        return 1000 * self.eval_mod

    @staticmethod
    def attempt_seed(seed: Optional[int], attempt: int) -> int:
        """The seed of ``reset``'s try number ``attempt`` from ``seed``."""
        return ((0 if seed is None else int(seed)) + 7919 * attempt) % 2**31

    def no_episode(self, split: str) -> ValueError:
        return ValueError(f"gymnasium {self.id}: no {split!r} episode found (is its pool of games tiny?)")

    def start(self, seed: int, obs: Any, info: dict, split: str):
        """The episode the game was reset to with ``seed``, as ``reset`` returns it, if it is in
        ``split`` (the state set); else None."""
        message = self._message(obs, info)
        key = str(info.get(self.keys["episode"], message)) if self.keys["episode"] else message
        if split_of(f"gymnasium:{self.id}", key, self.eval_mod) != split:
            return None
        self.episode, self.actions, self.info = seed, [], dict(info)
        self.episode_over = self.solved = False
        return message, {**info, "success": False, "turn": 0, "valid_action": True, "episode_key": key,
                         "horizon": self.horizon, "split": split}

    def step(self, text: str):
        """One action text; after the end, an observation saying so (the game is not called)."""
        over = self.over()
        if over is not None:
            return over
        return self.stepped(*self.env.step(self.action(text)))

    def over(self):
        """What ``step`` returns without calling the game (the episode is over), else None."""
        if self.episode is None:
            raise RuntimeError(f"gymnasium {self.id}: call reset() before step()")
        if self.episode_over:
            return EPISODE_OVER, 0.0, True, False, {"success": self.solved, "valid_action": False, "turn": len(self.actions)}
        return None

    def action(self, text: str) -> Any:
        """Record ``text`` as the next action; the game's action for it."""
        self.actions.append(text)
        return self.action_fn(text, self.env) if self.action_fn is not None else text

    def stepped(self, obs: Any, reward: float, terminated: bool, truncated: bool, info: dict):
        """``step``'s result from the game's answer to the last ``action``."""
        key = self.keys["success"]
        self.solved = bool(info.get(key, False)) if key else bool(terminated and reward > 0)
        truncated = bool(truncated) or (not terminated and len(self.actions) >= self.max_turns)
        self.episode_over, self.info = bool(terminated) or truncated, dict(info)
        out = {**info, "success": self.solved, "turn": len(self.actions), "valid_action": bool(info.get("valid_action", True)),
               "horizon": self.horizon}
        return self._message(obs, info), float(reward), bool(terminated), truncated, out

    @classmethod
    def vector_group(cls, options: dict, n: int, registry: Any = None):
        """``n`` episodes of a batch stepping through one gymnasium vector environment
        (``gym_vector.VectorGroup``), or None when ``options`` say ``vector = "none"``."""
        if options.get("vector", VECTOR_MODES[0]) == "none":
            return None
        return VectorGroup(cls, dict(options), n, registry)

    def close(self) -> None:
        self.env.close()

    @property
    def turn(self) -> int:
        return len(self.actions)

    # -- capabilities -------------------------------------------------------------------------
    def expert_action(self) -> str:
        """The expert's next action text (``expert`` callable or ``info[expert_key]``)."""
        if self.expert_fn is not None:
            return str(self.expert_fn(self.env, self.info))
        key = self.keys["expert"]
        if not key:
            raise MissingCapability(f"gymnasium {self.id} has no expert: set expert_key or expert in [task.options.env_options]")
        if key not in self.info:
            raise MissingCapability(f"gymnasium {self.id}: info has no {key!r} (expert_key) at turn {len(self.actions)}")
        return str(self.info[key])

    def replay(self, actions: list[str]) -> str:
        """Reset with the episode's seed and step ``actions`` again; the last observation."""
        if not self.can_replay:
            raise MissingCapability(f"gymnasium {self.id} cannot replay episodes (replay = false)")
        if self.episode is None:
            raise RuntimeError(f"gymnasium {self.id}: call reset() before replay()")
        obs, info = self.env.reset(seed=self.episode)
        self.actions, self.info, self.episode_over, self.solved = [], dict(info), False, False
        message = self._message(obs, info)
        for action in list(actions):
            message = self.step(action)[0]
        return message

    def optimal_cost(self) -> Optional[int]:
        """Not defined for a game: ``is_optimal`` compares with the expert's action."""
        return None

    def is_optimal(self, action: str) -> bool:
        """Whether ``action`` is the expert's next action (case and spacing aside)."""
        def norm(text: str) -> str:
            return " ".join(str(text).lower().split())

        return norm(action) == norm(self.expert_action())
