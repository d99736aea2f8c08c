"""The ``agent`` task: prompts are the first observations of environment episodes.

``[task] name = "agent"`` with ``[task.options] env = "gridnav"`` gives prompts
``<bos> obs_0 ACT`` (the layout of ``opdplug_agents.textio``) whose ``meta`` says which episode
they start: ``{"env", "seed", "options", "length"}``. The ``agent`` samplers play the episode
on from there; ``verify`` replays a completion's actions in the environment.

One tokenizer for every environment: ``AgentTask.words()`` is the vocabulary of every
registered one (the core builds a tiny student's tokenizer from the task *class*, before any
option is read), so a model trained on one environment loads for another. Installing or
disabling a plugin that registers environments therefore changes the words, and with them a
fresh tiny model's ids and initialisation; a saved model keeps its own tokenizer.

Environments are found by name in a registry (``opdplug_agents.registries``): the one the
task is given (``registry=``, which the kernel passes to a task factory that asks for it), else
the installed plugins' (what ``opdplug plugins`` lists). The plugin's ``opd_validate`` checks
``env`` against the run's registry before anything loads.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from opdplug.types import Prompt

from . import textio
from .dialogue import CodecOptions, make_codec
from .envs import MissingCapability
from .registries import env_names, horizon_range, make_env

RESERVED_ENV_OPTIONS = ("horizon", "split", "max_turns")
"""Environment options the task sets itself (from ``min_horizon``/``max_horizon``, the split
asked for, and ``max_turns``)."""
ACTION_SLACK = 4
"""Tokens an automatic action budget allows beyond the expert's longest action."""


@dataclass(frozen=True)
class AgentTaskOptions:
    """Config of the ``agent`` task (``[task.options]``)."""

    env: str = "gridnav"
    """A registered environment's name (built in: calc_lookup, gridnav, swapsort)."""
    min_horizon: int = 2
    """Smallest horizon drawn when ``prompts(length=None)``."""
    max_horizon: int = 2
    """Largest horizon drawn (uniformly between the two)."""
    max_turns: int = 0
    """Turn limit of an episode (0: the environment's default, about twice the expert's)."""
    max_action_tokens: int = 0
    """Token budget of one action (0: the expert's longest action at that horizon + 4)."""
    env_options: dict = field(default_factory=dict)
    """Other constructor options of the environment, e.g. ``{size = 5, wall_density = 0.2}``."""
    seed_offset: int = 0
    """Added to every seed, for a different episode stream from the same run seed."""
    tool_format: str = "hermes"
    """Chat models only: how tool calls are written (a registered format: hermes, llama3_json,
    json)."""
    system_prompt: str = ""
    """Chat models only: a system message first in every episode."""
    max_context_tokens: int = 0
    """An episode stops (``stop_reason = "context"``) before its ids could pass this many
    tokens (0: the student's ``max_position_embeddings`` where it has one)."""

    def __post_init__(self) -> None:
        if self.max_turns < 0 or self.max_action_tokens < 0 or self.max_context_tokens < 0:
            raise ValueError("max_turns, max_action_tokens and max_context_tokens must be >= 0")
        taken = sorted(set(self.env_options) & set(RESERVED_ENV_OPTIONS))
        if taken:
            raise ValueError(f"env_options must not set {taken}: the task sets them (min_horizon/max_horizon, the split, max_turns)")

    def check_env(self, registry=None) -> None:
        """The checks that need the environment (looked up in ``registry``): its horizon range,
        and its options, by building it at both ends of the range."""
        lo, hi = horizon_range(self.env, self.env_options, registry, "task.options.env")
        if not lo <= self.min_horizon <= self.max_horizon <= hi:
            raise ValueError(f"{self.env} needs {lo} <= min_horizon <= max_horizon <= {hi}, got {self.min_horizon}, {self.max_horizon}")
        for horizon in {self.min_horizon, self.max_horizon}:
            build_env(self.env, env_options(self, horizon, "train"), registry)  # bad env options fail now


def env_options(opts: AgentTaskOptions, horizon: int, split: str) -> dict:
    """The environment's constructor options for one episode."""
    out = {**opts.env_options, "horizon": horizon, "split": split}
    if opts.max_turns:
        out["max_turns"] = opts.max_turns
    return out


def build_env(name: str, options: dict, registry=None):
    """The registered environment ``name`` built with ``options``; a bad option is a one-line
    ``ValueError`` naming the env."""
    return make_env(name, options, registry, "task.options.env")


def _expert_action_tokens(codec, name: str, options: dict, registry=None, seeds: int = 4) -> int:
    """Longest expert action in ``codec``'s ids (end of turn included) over a few episodes."""
    longest = 1
    env = build_env(name, options, registry)
    try:
        for seed in range(seeds):
            env.reset(seed=seed)
            done = False
            while not done:
                action = env.expert_action()
                longest = max(longest, len(codec.expert_action_ids(env, action)))
                _, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
    finally:
        getattr(env, "close", lambda: None)()
    return longest


class AgentTask:
    """Multi-turn tool use in one environment; ``length`` = the environment's horizon."""

    name = "agent"
    options_class = AgentTaskOptions  # the core validates [task.options] against it

    def __init__(self, tokenizer: Any = None, options: Union[AgentTaskOptions, dict, None] = None, *,
                 registry=None, **option_kwargs: Any) -> None:
        """Build the task.

        :param tokenizer: a tokenizer knowing ``words()`` (None builds a tiny one).
        :param options: an ``AgentTaskOptions`` or a dict of its fields.
        :param registry: where the environments are registered (default: the installed plugins').
        :param option_kwargs: fields given directly (``AgentTask(env="swapsort")``).
        """
        if isinstance(options, AgentTaskOptions):
            options = dataclasses.asdict(options)
        self.options = AgentTaskOptions(**{**(options or {}), **option_kwargs})
        self.registry = registry
        self.options.check_env(registry)
        if tokenizer is None:
            from opdplug_local.tiny import build_tokenizer

            tokenizer = build_tokenizer(self.words())
        opts = self.options
        self.codec = make_codec(tokenizer, CodecOptions(opts.tool_format, opts.system_prompt), registry)
        """How episodes become ids (``opdplug_agents.dialogue``): the tokenizer's chat template,
        or the word layout of the built-in tiny models."""
        if isinstance(self.codec, textio.WordCodec):
            env_words = self.env_words()
            if env_words == [textio.MARKER]:
                raise ValueError(f"{opts.env} has no closed vocabulary, so a word-level model cannot play it; "
                                 "use a model whose tokenizer has a chat template")
            vocab = tokenizer.get_vocab()
            missing = [w for w in env_words if w not in vocab]
            if missing:
                raise ValueError(f"the tokenizer lacks {len(missing)} words of {opts.env}, e.g. {missing[0]!r}; build it from AgentTask.words()")
        self.tokenizer = tokenizer
        self._envs: dict[str, Any] = {}
        self._budgets: dict[str, int] = {}

    # -- vocabulary ------------------------------------------------------------------------
    @staticmethod
    def words() -> list[str]:
        """Every word of every registered environment, and the action marker (one shared
        tokenizer)."""
        return textio.agent_words(env_names())

    def env_words(self) -> list[str]:
        """The words of this task's environment only (with the marker)."""
        return textio.agent_words([self.options.env], self.registry)

    # -- prompts ---------------------------------------------------------------------------
    def prompts(self, n: int, *, seed: int, split: str = "train", length: Optional[int] = None) -> list[Prompt]:
        """``n`` episode starts of ``split``, deterministic in ``(seed, split, length, seed_offset)``.

        Horizons are uniform in ``[min_horizon, max_horizon]`` unless ``length`` fixes one; each
        episode's reset seed is drawn from the same stream. The environments put an episode in
        train or eval by a hash of its content, so the splits never share an episode.
        """
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        opts = self.options
        lo, hi = horizon_range(opts.env, opts.env_options, self.registry, "task.options.env")
        if length is not None and not lo <= length <= hi:
            raise ValueError(f"length (the horizon of {opts.env}) must be in {lo}..{hi}, got {length}")
        # A string seed is hashed by random.Random with SHA-512: stable across processes.
        rng = random.Random(f"agent:{opts.env}:{seed + opts.seed_offset}:{split}:{length}")
        out = []
        for _ in range(n):
            horizon = length if length is not None else rng.randint(opts.min_horizon, opts.max_horizon)
            env_seed = rng.randrange(2**31)
            options = env_options(opts, horizon, split)
            env = self.env(options)
            obs, _ = env.reset(seed=env_seed)
            ids = [*self.codec.bos_ids, *self.codec.observation_ids(env, obs, True)]
            out.append(Prompt(
                prompt_ids=tuple(ids),
                meta={"env": opts.env, "seed": env_seed, "options": options, "length": horizon},
            ))
        return out

    def max_new_tokens(self, length: int) -> int:
        """Token budget of ONE action at horizon ``length`` (``max_action_tokens``, or the
        expert's longest action there plus ``ACTION_SLACK``)."""
        if self.options.max_action_tokens:
            return self.options.max_action_tokens
        options = env_options(self.options, int(length), "train")
        key = json.dumps(options, sort_keys=True)
        if key not in self._budgets:
            try:
                self._budgets[key] = _expert_action_tokens(self.codec, self.options.env, options, self.registry) + ACTION_SLACK
            except MissingCapability as exc:
                raise MissingCapability(f"{exc}; or set [task.options] max_action_tokens") from None
        return self._budgets[key]

    def env(self, options: dict) -> Any:
        """This task's instance of its environment with ``options``, built once and reused
        (reset before each use); ``close()`` closes them."""
        key = json.dumps(options, sort_keys=True)
        if key not in self._envs:
            self._envs[key] = build_env(self.options.env, dict(options), self.registry)
        return self._envs[key]

    def close(self) -> None:
        """Close the environments this task built."""
        for env in self._envs.values():
            getattr(env, "close", lambda: None)()
        self._envs.clear()

    # -- scoring ---------------------------------------------------------------------------
    def verify(self, prompt: Prompt, completion_ids: Any) -> float:
        """1.0 iff replaying the completion's actions in the prompt's episode succeeds.

        ``completion_ids``: the ids after the prompt in the full layout (observations included),
        or the action tokens alone (see ``textio.split_actions``). Never raises.
        """
        try:
            meta = prompt.meta
            env = self.env(dict(meta["options"])) if meta["env"] == self.options.env else build_env(
                meta["env"], dict(meta["options"]), self.registry)
            env.reset(seed=int(meta["seed"]))
            info = {"success": False}
            for action_ids in self.codec.split_actions(completion_ids, env):
                _, _, terminated, truncated, info = env.step(self.codec.action_text(env, action_ids))
                if terminated or truncated:
                    break
            return 1.0 if info["success"] else 0.0
        except Exception:  # noqa: BLE001 - a verifier must never take a run down
            return 0.0
