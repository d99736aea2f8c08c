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

ENV_ADAPTERS = "env_adapters"
"""The registry kind of adapter callables (hookspec ``opd_register_env_adapters``)."""
EPISODE_OVER = "the episode is over"
"""The observation of a step after the end (not sent to the game)."""
DEFAULT_MAX_TURNS = 50
"""Turn limit when the config gives none."""


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
                 replay: bool = True, episode_key: str = "", registry: Any = None, **kwargs: Any) -> None:
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
        if horizon_key:
            kwargs[horizon_key] = horizon
        try:
            self.env = gymnasium.make(id, disable_env_checker=True, **kwargs)
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
        base = 0 if seed is None else int(seed)
        for attempt in range(1000 * self.eval_mod):
            s = (base + 7919 * attempt) % 2**31
            obs, info = self.env.reset(seed=s)
            message = self._message(obs, info)
            key = str(info.get(self.keys["episode"], message)) if self.keys["episode"] else message
            if split_of(f"gymnasium:{self.id}", key, self.eval_mod) == split:
                break
        else:
            raise ValueError(f"gymnasium {self.id}: no {split!r} episode found (is its pool of games tiny?)")
        self.episode, self.actions, self.info = s, [], dict(info)
        self.episode_over = self.solved = False
        return message, {**info, "success": False, "turn": 0, "valid_action": True, "episode_key": key,
                         "horizon": self.horizon, "split": split}

    def step(self, text: str):
        """One action text; after the end, an observation saying so (the game is not called)."""
        if self.episode is None:
            raise RuntimeError(f"gymnasium {self.id}: call reset() before step()")
        if self.episode_over:
            return EPISODE_OVER, 0.0, True, False, {"success": self.solved, "valid_action": False, "turn": len(self.actions)}
        self.actions.append(text)
        action = self.action_fn(text, self.env) if self.action_fn is not None else text
        obs, reward, terminated, truncated, info = self.env.step(action)
        key = self.keys["success"]
        self.solved = bool(info.get(key, False)) if key else bool(terminated and reward > 0)
        truncated = bool(truncated) or (not terminated and len(self.actions) >= self.max_turns)
        self.episode_over, self.info = bool(terminated) or truncated, dict(info)
        out = {**info, "success": self.solved, "turn": len(self.actions), "valid_action": bool(info.get("valid_action", True)),
               "horizon": self.horizon}
        return self._message(obs, info), float(reward), bool(terminated), truncated, out

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
