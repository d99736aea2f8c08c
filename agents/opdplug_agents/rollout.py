"""Batched multi-turn episodes: actors act, environments answer, ids are kept exactly.

``run_episodes`` runs many episodes at once. Each round, every running episode takes one turn:
a fixed prefix action if it has one left (``prefixes``: replay), otherwise the actor that
``actors(episode_index, turn)`` chooses. All episodes a model acts for in a round go to ONE
``sampling.sample`` call (their exact histories, one row each). Environments then answer, and
the observation plus the marker are appended. The token layout is ``textio``'s.

``episodes_to_batch`` turns episodes into a ``RolloutBatch``: the environment's tokens are
``PRODUCER_ENV`` and never carry loss; action tokens carry loss when their writer is in
``train_on``.

SCoRe-style correction needs no more than this: replay the student's verified prefix
(``prefixes``), let the teacher take turn k (``actors`` returns the teacher actor for turn k)
and the student the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import torch

from opdplug_local import sampling
from opdplug.types import (
    PRODUCER_ENV,
    PRODUCER_PAD,
    PRODUCER_PROMPT,
    PRODUCER_STUDENT,
    PRODUCER_TEACHER,
    Prompt,
    RolloutBatch,
)

from . import textio
from .envs import ENVS

Producer = Literal["student", "teacher", "expert"]
PRODUCERS: tuple[str, ...] = ("student", "teacher", "expert")
PRODUCER_CODES: dict[str, int] = {
    "student": PRODUCER_STUDENT,
    "teacher": PRODUCER_TEACHER,
    "expert": PRODUCER_TEACHER,  # an expert is a teacher that happens to be a program
}
"""Turn producer name -> ``RolloutBatch.producer_B_L`` code."""


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Turn:
    """One turn: the observation the actor saw, and the action it took."""

    observation: str
    """The observation's text."""
    observation_ids: tuple[int, ...]
    """The observation's word ids followed by the marker id (written by the environment)."""
    action_ids: tuple[int, ...]
    """The action's ids exactly as produced, ``<eos>`` included unless ``truncated``."""
    action_text: str
    """The text sent to the environment (``textio.decode_action`` of ``action_ids``)."""
    producer: str
    """Who wrote the action: ``"student"``, ``"teacher"`` or ``"expert"``."""
    action_logprobs: tuple[float, ...]
    """Per action token, its log-prob under the sampling policy at the rollout temperature
    (0 for expert actions and replayed prefix actions without log-probs)."""
    valid: bool
    """Whether the environment accepted the call (``info["valid_action"]``)."""
    truncated: bool = False
    """The action hit the token budget without ``<eos>``; the environment closed it with one
    ``<eos>`` of its own (``closing_ids``)."""
    closing_ids: tuple[int, ...] = ()
    """Environment-written ids after the action: ``(eos,)`` when ``truncated``, else empty."""

    @property
    def token_ids(self) -> tuple[int, ...]:
        """This turn's part of the episode's ids: observation, marker, action, closing."""
        return self.observation_ids + self.action_ids + self.closing_ids


@dataclass(frozen=True)
class Episode:
    """One finished (or stopped) multi-turn episode with its exact token ids."""

    env: str
    """Environment name (a key of ``opdplug_agents.envs.ENVS``)."""
    seed: int
    """The seed ``env.reset`` was called with."""
    options: dict = field(hash=False)
    """The environment's constructor options (``horizon``, ``split``, ...)."""
    turns: tuple[Turn, ...]
    """The turns taken, in order."""
    success: bool
    """The environment reported success (``info["success"]``) after the last turn."""
    terminated: bool
    """The environment ended the episode (answer given, goal reached, ...)."""
    truncated: bool
    """The episode was cut off: the environment's turn limit, ``max_turns`` or ``max_tokens``."""
    final_observation: str
    """The observation after the last action (not part of ``token_ids``)."""
    bos_ids: tuple[int, ...]
    """``(bos,)``, or empty for a tokenizer without BOS."""
    num_turns: int
    """``len(turns)``."""
    token_ids: tuple[int, ...]
    """``bos_ids`` then every turn's ``token_ids``: the exact sequence a model saw."""

    def __post_init__(self) -> None:
        if self.num_turns != len(self.turns):
            raise ValueError(f"num_turns = {self.num_turns} but {len(self.turns)} turns")
        expected = self.bos_ids + sum((t.token_ids for t in self.turns), ())
        if self.token_ids != expected:
            raise ValueError("token_ids differ from the concatenation of the turns' ids")

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        """The first observation with BOS and marker: where the first action starts."""
        return self.bos_ids + (self.turns[0].observation_ids if self.turns else ())

    def prompt(self) -> Prompt:
        """The ``Prompt`` this episode answers (the agent task's format)."""
        return Prompt(
            prompt_ids=self.prompt_ids,
            meta={"env": self.env, "seed": self.seed, "options": dict(self.options), "length": self.options.get("horizon")},
        )


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to run."""

    env: str
    """Environment name."""
    seed: int
    """Seed of ``env.reset``."""
    options: dict = field(default_factory=dict, hash=False)
    """Constructor options of the environment (``horizon``, ``split``, ``max_turns``, ...)."""


@dataclass(frozen=True)
class FixedTurn:
    """An action replayed exactly (``prefixes`` of ``run_episodes``)."""

    action_ids: tuple[int, ...]
    """The action's ids (``<eos>`` last, or none for an action that was truncated)."""
    producer: str
    """Who wrote it originally: ``"student"``, ``"teacher"`` or ``"expert"``."""
    action_logprobs: Optional[tuple[float, ...]] = None
    """Its sampling log-probs, if known (else zeros)."""


# ----------------------------------------------------------------------------- actors
@dataclass(frozen=True, eq=False)
class ModelActor:
    """A local Hugging Face causal LM that samples actions (eq=False: one actor per object)."""

    model: Any
    """The model (plain or wrapped; only forward calls are made)."""
    producer: str = "student"
    """Recorded as the turns' producer: ``"student"`` or ``"teacher"``."""
    temperature: Optional[float] = None
    """Sampling temperature; None takes ``run_episodes``' ``temperature``."""
    top_p: float = 1.0
    """Nucleus mass (1 disables)."""


@dataclass(frozen=True, eq=False)
class ExpertActor:
    """The environment's expert (``env.expert_action()``): log-probs 0, producer ``"expert"``."""

    producer: str = "expert"
    """Recorded as the turns' producer."""


@dataclass(frozen=True, eq=False)
class PolicyActor:
    """A program that acts: ``policy(env, turn) -> action text`` (e.g. a scripted or noisy
    student in tests and benchmarks). Log-probs 0, like the expert's; ``env`` is the running
    bare environment (``expert_action()`` and ``is_optimal()`` are there to use)."""

    policy: Callable[[Any, int], str]
    """Called with the environment and the turn index (from 0)."""
    producer: str = "student"
    """Recorded as the turns' producer."""


Actor = Union[ModelActor, ExpertActor, PolicyActor]
ActorChoice = Union[Actor, Callable[[int, int], Actor]]
"""One actor for every turn, or ``choose(episode_index, turn) -> Actor``."""


# ----------------------------------------------------------------------------- running
@dataclass
class _Running:
    """Mutable state of one episode while it runs."""

    spec: EpisodeSpec
    env: Any
    ids: list[int]
    observation: str
    observation_ids: tuple[int, ...]
    prefix: list[FixedTurn]
    turns: list[Turn] = field(default_factory=list)
    done: bool = False
    success: bool = False
    terminated: bool = False
    truncated: bool = False


def _spec(item: Any) -> EpisodeSpec:
    if isinstance(item, EpisodeSpec):
        return item
    env, seed, options = item
    return EpisodeSpec(env, int(seed), dict(options or {}))


def _fixed(item: Any) -> FixedTurn:
    if isinstance(item, FixedTurn):
        return item
    if isinstance(item, Turn):
        return FixedTurn(item.action_ids, item.producer, item.action_logprobs)
    action_ids, producer, *rest = item
    return FixedTurn(tuple(int(i) for i in action_ids), producer, tuple(rest[0]) if rest and rest[0] is not None else None)


def _check_producer(producer: str) -> None:
    if producer not in PRODUCERS:
        raise ValueError(f"producer must be one of {', '.join(PRODUCERS)}, got {producer!r}")


def run_episodes(
    specs: Sequence[Any],
    actors: ActorChoice,
    tokenizer,
    *,
    max_action_tokens: int,
    max_turns: Optional[int] = None,
    temperature: float,
    generator: Optional[torch.Generator],
    prefixes: Optional[Sequence[Sequence[Any]]] = None,
    max_tokens: Optional[int] = None,
    envs: Optional[Mapping[str, type]] = None,
) -> list[Episode]:
    """Run many episodes at once, keeping exact token ids.

    :param specs: ``EpisodeSpec`` or ``(env_name, seed, options)`` per episode; ``options`` are
        the environment's constructor options (``horizon``, ``split``, ``max_turns``, ...).
    :param actors: a ``ModelActor`` / ``ExpertActor`` / ``PolicyActor`` for every turn, or a callable
        ``(episode_index, turn) -> actor`` (turn counts from 0, prefix turns included).
    :param tokenizer: a tokenizer knowing ``textio.agent_words`` of the environments.
    :param max_action_tokens: token budget of one sampled action; an action without ``<eos>``
        by then is truncated, still sent to the environment, and closed by an env ``<eos>``.
    :param max_turns: stop (truncated) after this many turns; None: the environment's limit.
    :param temperature: sampling temperature of model actors (0: greedy, log-probs at 1).
    :param generator: seeded generator for the draws (models sample in order of their first
        episode each round, so a run is a function of its inputs).
    :param prefixes: per episode, ``FixedTurn``s (or ``(action_ids, producer)`` pairs, or
        ``Turn``s) replayed exactly as its first turns, before any actor is asked.
    :param max_tokens: after a turn, stop the episode (truncated) if its history plus the next
        observation and action could exceed this many tokens (a model's context); None: no limit.
    :param envs: name -> environment class (default ``opdplug_agents.envs.ENVS``).
    :return: one ``Episode`` per spec, in order.
    :raises ValueError: unknown environment, bad prefix (an ``<eos>`` before its end, an
        unknown producer, more turns than the episode lasts), or an unknown observation word.
    """
    envs = ENVS if envs is None else envs
    if max_action_tokens < 1:
        raise ValueError(f"max_action_tokens must be at least 1, got {max_action_tokens}")
    specs = [_spec(s) for s in specs]
    prefixes = [[] for _ in specs] if prefixes is None else [[_fixed(t) for t in p] for p in prefixes]
    if len(prefixes) != len(specs):
        raise ValueError(f"{len(prefixes)} prefixes for {len(specs)} episodes")
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    marker = textio.marker_id(tokenizer)
    choose = (lambda i, t: actors) if isinstance(actors, (ModelActor, ExpertActor, PolicyActor)) else actors

    running: list[_Running] = []
    for spec, prefix in zip(specs, prefixes):
        if spec.env not in envs:
            raise ValueError(f"unknown environment {spec.env!r}; known: {', '.join(sorted(envs))}")
        for fixed in prefix:
            _check_producer(fixed.producer)
            if eos in fixed.action_ids[:-1]:
                raise ValueError("a prefix action has <eos> before its last token")
        env = envs[spec.env](**spec.options)
        obs, _ = env.reset(seed=spec.seed)
        obs_ids = (*textio.encode_observation(tokenizer, obs, spec.env), marker)
        bos_ids = [bos] if bos is not None else []
        running.append(_Running(spec, env, [*bos_ids, *obs_ids], obs, obs_ids, list(prefix)))

    while True:
        active = [i for i, r in enumerate(running) if not r.done]
        if not active:
            break
        # (action_ids, logprobs, producer, truncated) per acting episode this round.
        acted: dict[int, tuple[list[int], list[float], str, bool]] = {}
        by_model: dict[int, tuple[ModelActor, list[int]]] = {}
        for i in active:
            r = running[i]
            if r.prefix:
                fixed = r.prefix.pop(0)
                lps = list(fixed.action_logprobs) if fixed.action_logprobs is not None else [0.0] * len(fixed.action_ids)
                if len(lps) != len(fixed.action_ids):
                    raise ValueError("a prefix action's log-probs and ids differ in length")
                ended = bool(fixed.action_ids) and fixed.action_ids[-1] == eos
                acted[i] = (list(fixed.action_ids), lps, fixed.producer, not ended)
                continue
            actor = choose(i, len(r.turns))
            if isinstance(actor, (ExpertActor, PolicyActor)):
                _check_producer(actor.producer)
                text = r.env.expert_action() if isinstance(actor, ExpertActor) else actor.policy(r.env, len(r.turns))
                ids = textio.encode_action(tokenizer, text, r.spec.env)
                acted[i] = (ids, [0.0] * len(ids), actor.producer, False)
            elif isinstance(actor, ModelActor):
                _check_producer(actor.producer)
                by_model.setdefault(id(actor), (actor, []))[1].append(i)
            else:
                raise TypeError(f"an actor must be a ModelActor, an ExpertActor or a PolicyActor, got {type(actor).__name__}")
        for actor, rows in by_model.values():
            for i, (ids, lps, truncated) in zip(rows, _sample(actor, [running[i].ids for i in rows], tokenizer, max_action_tokens, temperature, generator)):
                acted[i] = (ids, lps, actor.producer, truncated)
        for i in active:
            _advance(running[i], *acted[i], tokenizer=tokenizer, marker=marker, max_turns=max_turns,
                     max_tokens=max_tokens, max_action_tokens=max_action_tokens)

    out = []
    for r in running:
        if r.prefix:
            raise ValueError(f"episode {r.spec.env} seed {r.spec.seed} ended after {len(r.turns)} turns with {len(r.prefix)} prefix turns left")
        bos_ids = (bos,) if bos is not None else ()
        out.append(Episode(
            env=r.spec.env, seed=r.spec.seed, options=dict(r.spec.options), turns=tuple(r.turns),
            success=r.success, terminated=r.terminated, truncated=r.truncated, final_observation=r.observation,
            bos_ids=bos_ids, num_turns=len(r.turns), token_ids=tuple(r.ids[: len(bos_ids) + sum(len(t.token_ids) for t in r.turns)]),
        ))
    return out


def _sample(actor: ModelActor, histories: list[list[int]], tokenizer, max_action_tokens: int,
            temperature: float, generator) -> list[tuple[list[int], list[float], bool]]:
    """One batched ``sampling.sample`` call: per row (action ids, log-probs, truncated)."""
    model = actor.model
    was_training = model.training
    # Inference mode (no dropout) while sampling: the log-probs must be the policy's. Spelt
    # train(False): the package keeps clear of the name eval (test_tools checks).
    model.train(False)
    try:
        res = sampling.sample(
            model, histories, max_new_tokens=max_action_tokens,
            temperature=actor.temperature if actor.temperature is not None else temperature, top_p=actor.top_p,
            eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, generator=generator,
        )
    finally:
        model.train(was_training)
    out = []
    mask_B_L = res.completion_mask_B_L.bool().cpu()
    ids_B_L, lps_B_L = res.input_ids_B_L.cpu(), res.logprobs_B_L.cpu()
    for b in range(len(histories)):
        out.append((ids_B_L[b][mask_B_L[b]].tolist(), lps_B_L[b][mask_B_L[b]].tolist(), bool(res.truncated_B[b])))
    return out


def _advance(r: _Running, action_ids: list[int], logprobs: list[float], producer: str, truncated: bool, *,
             tokenizer, marker: int, max_turns: Optional[int], max_tokens: Optional[int], max_action_tokens: int) -> None:
    """Send one action to the environment, record the turn, append the next observation."""
    eos = tokenizer.eos_token_id
    text = textio.decode_action(tokenizer, action_ids)
    obs, _, terminated, truncated_env, info = r.env.step(text)
    closing = (eos,) if truncated else ()
    r.turns.append(Turn(
        observation=r.observation, observation_ids=r.observation_ids, action_ids=tuple(action_ids),
        action_text=text, producer=producer, action_logprobs=tuple(float(x) for x in logprobs),
        valid=bool(info.get("valid_action", True)), truncated=truncated, closing_ids=closing,
    ))
    r.ids += [*action_ids, *closing]
    r.observation, r.success, r.terminated = obs, bool(info.get("success", False)), bool(terminated)
    out_of_turns = max_turns is not None and len(r.turns) >= max_turns and not r.prefix
    if terminated or truncated_env or out_of_turns:
        r.done, r.truncated = True, not terminated
        return
    r.observation_ids = (*textio.encode_observation(tokenizer, obs, r.spec.env), marker)
    r.ids += r.observation_ids
    # The next action takes at most max_action_tokens, plus an env <eos> if it is truncated.
    if max_tokens is not None and len(r.ids) + max_action_tokens + 1 > max_tokens and not r.prefix:
        r.done, r.truncated = True, True


# ----------------------------------------------------------------------------- batching
def episodes_to_batch(
    episodes: Sequence[Episode],
    *,
    train_on: Sequence[str] = ("student",),
    pad_id: int = 0,
    prompts: Optional[Sequence[Prompt]] = None,
) -> RolloutBatch:
    """A right-padded ``RolloutBatch`` of episodes.

    :param train_on: producers whose action tokens (``<eos>`` included) carry loss:
        ``"student"``, ``"teacher"`` and/or ``"expert"``. Environment tokens never do.
    :param pad_id: id of the right padding.
    :param prompts: the ``Prompt`` of each episode (e.g. the task's); default ``Episode.prompt()``.
        Their ``prompt_ids`` must equal the episodes' ``prompt_ids``.
    :return: ``producer_B_L`` is PROMPT on ``<bos>``, ENV on observations, markers and closing
        ``<eos>``s, STUDENT/TEACHER on actions (experts count as TEACHER); ``turn_ids_B_L`` the
        turn of each token (-1 on padding); ``rewards_B`` 1.0 on success; ``truncated_B`` the
        episodes cut off by a limit; ``on_policy_B`` episodes whose every action is the student's;
        ``prompt_lens_B`` the first observation's length with ``<bos>`` and marker.
    """
    if not episodes:
        raise ValueError("episodes_to_batch needs at least one episode")
    for name in train_on:
        _check_producer(name)
    if prompts is None:
        prompts = [e.prompt() for e in episodes]
    if len(prompts) != len(episodes):
        raise ValueError(f"{len(prompts)} prompts for {len(episodes)} episodes")
    for p, e in zip(prompts, episodes):
        if tuple(p.prompt_ids) != e.prompt_ids:
            raise ValueError(f"a prompt's ids differ from its episode's first observation ({e.env} seed {e.seed})")
    B, L = len(episodes), max(len(e.token_ids) for e in episodes)
    ids_B_L = torch.full((B, L), pad_id, dtype=torch.long)
    attn_B_L = torch.zeros(B, L, dtype=torch.long)
    loss_B_L = torch.zeros(B, L, dtype=torch.long)
    prod_B_L = torch.full((B, L), PRODUCER_PAD, dtype=torch.long)
    turn_B_L = torch.full((B, L), -1, dtype=torch.long)
    lps_B_L = torch.zeros(B, L, dtype=torch.float32)
    for b, e in enumerate(episodes):
        n = len(e.token_ids)
        ids_B_L[b, :n] = torch.tensor(e.token_ids, dtype=torch.long)
        attn_B_L[b, :n] = 1
        pos = len(e.bos_ids)
        prod_B_L[b, :pos] = PRODUCER_PROMPT
        turn_B_L[b, :pos] = 0
        for t, turn in enumerate(e.turns):
            spans = ((turn.observation_ids, PRODUCER_ENV, None), (turn.action_ids, PRODUCER_CODES[turn.producer], turn),
                     (turn.closing_ids, PRODUCER_ENV, None))
            for span, code, action in spans:
                end = pos + len(span)
                prod_B_L[b, pos:end] = code
                turn_B_L[b, pos:end] = t
                if action is not None:
                    lps_B_L[b, pos:end] = torch.tensor(action.action_logprobs, dtype=torch.float32)
                    if action.producer in train_on:
                        loss_B_L[b, pos:end] = 1
                pos = end
    return RolloutBatch(
        input_ids_B_L=ids_B_L,
        attention_mask_B_L=attn_B_L,
        loss_mask_B_L=loss_B_L,
        producer_B_L=prod_B_L,
        sampling_logprobs_B_L=lps_B_L,
        prompt_lens_B=torch.tensor([len(e.prompt_ids) for e in episodes], dtype=torch.long),
        turn_ids_B_L=turn_B_L,
        rewards_B=torch.tensor([1.0 if e.success else 0.0 for e in episodes], dtype=torch.float32),
        truncated_B=torch.tensor([e.truncated for e in episodes], dtype=torch.bool),
        on_policy_B=torch.tensor([bool(e.turns) and all(t.producer == "student" for t in e.turns) for e in episodes]),
        prompts=tuple(prompts),
    )
