"""Batched multi-turn episodes: actors act, environments answer, ids are kept exactly.

``run_episodes`` runs many episodes at once. Each round, every running episode takes one turn:
a fixed prefix action if it has one left (``prefixes``: replay), otherwise the actor that
``actors(episode_index, turn)`` chooses. All episodes a model acts for in a round go to ONE
``sampling.sample`` call (their exact histories, one row each). Environments then answer, and
the observation plus the marker are appended. The token layout is ``textio``'s; environments
are found by name in the registry (``opdplug_agents.registries``).

SCoRe-style correction needs no more than this: replay the student's verified prefix
(``prefixes``), let the teacher take turn k (``actors`` returns the teacher actor for turn k)
and the student the rest.

The episode data (``Episode``, ``Turn``, ...) lives in ``episodes``, the actors in ``actors``
and ``episodes_to_batch`` in ``batching``; all are importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from opdplug_local import sampling

from .dialogue import as_codec
from .actors import Actor, ActorChoice, ExpertActor, ModelActor, PolicyActor
from .batching import episodes_to_batch
from .envpool import EnvPool, reset_batch, shared_pool, step_batch
from .registries import registry_or_installed
from .episodes import (
    PRODUCER_CODES,
    PRODUCERS,
    Episode,
    EpisodeSpec,
    FixedTurn,
    Producer,
    Turn,
    check_producer,
)

__all__ = [
    "PRODUCERS", "PRODUCER_CODES", "Actor", "ActorChoice", "Episode", "EpisodeSpec", "ExpertActor", "FixedTurn",
    "ModelActor", "PolicyActor", "Producer", "Turn", "episodes_to_batch", "run_episodes",
]

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
    stop_reason: str = ""


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
    registry=None,
    pool: Optional[EnvPool] = None,
) -> list[Episode]:
    """Run many episodes at once, keeping exact token ids.

    :param specs: ``EpisodeSpec`` or ``(env_name, seed, options)`` per episode; ``options`` are
        the environment's constructor options (``horizon``, ``split``, ``max_turns``, ...).
    :param actors: a ``ModelActor`` / ``ExpertActor`` / ``PolicyActor`` for every turn, or a callable
        ``(episode_index, turn) -> actor`` (turn counts from 0, prefix turns included).
    :param tokenizer: a codec (``opdplug_agents.dialogue``, e.g. ``AgentTask.codec``) or a
        tokenizer: with a chat template, turns are rendered with it; without, it must know
        ``textio.agent_words`` of the environments (the built-in tiny models).
    :param max_action_tokens: token budget of one sampled action; an action without ``<eos>``
        by then is truncated, still sent to the environment, and closed by an env ``<eos>``.
    :param max_turns: stop (truncated) after this many turns; None: the environment's limit.
    :param temperature: sampling temperature of model actors (0: greedy, log-probs at 1).
    :param generator: seeded generator for the draws (models sample in order of their first
        episode each round, so a run is a function of its inputs).
    :param prefixes: per episode, ``FixedTurn``s (or ``(action_ids, producer)`` pairs, or
        ``Turn``s) replayed exactly as its first turns, before any actor is asked.
    :param max_tokens: after a turn, stop the episode (truncated, ``stop_reason = "context"``)
        if its history plus the next observation and action could exceed this many tokens (a
        model's context); None: no limit.
    :param registry: where the environments are registered (``ctx.registry`` in a run; default:
        the installed plugins').
    :param pool: where environment instances come from and go back to (default: the process's
        ``shared_pool()``, which reuses them; ``EnvPool(reuse=False)``: fresh ones, closed after).
    :return: one ``Episode`` per spec, in order.
    :raises ConfigError: an environment no plugin registered.
    :raises ValueError: bad environment options, bad prefix (an ``<eos>`` before its end, an
        unknown producer, more turns than the episode lasts), or an unknown observation word.
    """
    registry = registry_or_installed(registry)
    codec = as_codec(tokenizer)
    pool = shared_pool() if pool is None else pool
    if max_action_tokens < 1:
        raise ValueError(f"max_action_tokens must be at least 1, got {max_action_tokens}")
    specs = [_spec(s) for s in specs]
    prefixes = [[] for _ in specs] if prefixes is None else [[_fixed(t) for t in p] for p in prefixes]
    if len(prefixes) != len(specs):
        raise ValueError(f"{len(prefixes)} prefixes for {len(specs)} episodes")
    eos, bos_ids = codec.eos_id, list(codec.bos_ids)
    choose = (lambda i, t: actors) if isinstance(actors, (ModelActor, ExpertActor, PolicyActor)) else actors

    running: list[_Running] = []
    envs: list = []
    try:
        for fixed in (f for prefix in prefixes for f in prefix):
            check_producer(fixed.producer)
            if eos in fixed.action_ids[:-1]:
                raise ValueError("a prefix action has <eos> before its last token")
        # one call per batch: a vector environment's slots are reset (and later stepped) together
        envs = pool.acquire_batch([(spec.env, spec.options) for spec in specs], registry)
        for spec, prefix, env, (obs, _) in zip(specs, prefixes, envs, reset_batch(envs, [spec.seed for spec in specs])):
            obs_ids = codec.observation_ids(env, obs, True)
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
                    check_producer(actor.producer)
                    text = r.env.expert_action() if isinstance(actor, ExpertActor) else actor.policy(r.env, len(r.turns))
                    ids = codec.expert_action_ids(r.env, text)
                    acted[i] = (ids, [0.0] * len(ids), actor.producer, False)
                elif isinstance(actor, ModelActor):
                    check_producer(actor.producer)
                    by_model.setdefault(id(actor), (actor, []))[1].append(i)
                else:
                    raise TypeError(f"an actor must be a ModelActor, an ExpertActor or a PolicyActor, got {type(actor).__name__}")
            for actor, rows in by_model.values():
                for i, (ids, lps, truncated) in zip(rows, _sample(actor, [running[i].ids for i in rows], codec, max_action_tokens, temperature, generator)):
                    acted[i] = (ids, lps, actor.producer, truncated)
            texts = [codec.action_text(running[i].env, acted[i][0]) for i in active]
            answers = step_batch([running[i].env for i in active], texts)
            for i, text, answer in zip(active, texts, answers):
                _advance(running[i], *acted[i], text, answer, codec=codec, max_turns=max_turns,
                         max_tokens=max_tokens, max_action_tokens=max_action_tokens)

    finally:  # every instance goes back (reused or closed), also when an actor raises
        for spec, env in zip(specs, envs):
            pool.release(env, spec.env, spec.options, registry)
    out = []
    for r in running:
        if r.prefix:
            raise ValueError(f"episode {r.spec.env} seed {r.spec.seed} ended after {len(r.turns)} turns with {len(r.prefix)} prefix turns left")
        out.append(Episode(
            env=r.spec.env, seed=r.spec.seed, options=dict(r.spec.options), turns=tuple(r.turns),
            success=r.success, terminated=r.terminated, truncated=r.truncated, final_observation=r.observation,
            bos_ids=tuple(bos_ids), num_turns=len(r.turns),
            token_ids=tuple(r.ids[: len(bos_ids) + sum(len(t.token_ids) for t in r.turns)]), stop_reason=r.stop_reason,
        ))
    return out


def _sample(actor: ModelActor, histories: list[list[int]], codec, max_action_tokens: int,
            temperature: float, generator) -> list[tuple[list[int], list[float], bool]]:
    """One batched ``sampling.sample`` call: per row (action ids, log-probs, truncated)."""
    model = actor.model
    was_training = model.training
    model.eval()  # no dropout while sampling: the log-probs must be the policy's
    try:
        res = sampling.sample(
            model, histories, max_new_tokens=max_action_tokens,
            temperature=actor.temperature if actor.temperature is not None else temperature, top_p=actor.top_p,
            eos_id=codec.eos_id, pad_id=codec.pad_id, generator=generator,
        )
    finally:
        model.train(was_training)
    out = []
    mask_B_L = res.completion_mask_B_L.bool().cpu()
    ids_B_L, lps_B_L = res.input_ids_B_L.cpu(), res.logprobs_B_L.cpu()
    for b in range(len(histories)):
        out.append((ids_B_L[b][mask_B_L[b]].tolist(), lps_B_L[b][mask_B_L[b]].tolist(), bool(res.truncated_B[b])))
    return out


def _advance(r: _Running, action_ids: list[int], logprobs: list[float], producer: str, truncated: bool, text: str,
             answer: tuple, *, codec, max_turns: Optional[int], max_tokens: Optional[int], max_action_tokens: int) -> None:
    """Record one turn (its action ``text`` and the environment's ``answer`` to it, from
    ``step_batch``) and append the next observation."""
    eos = codec.eos_id
    obs, _, terminated, truncated_env, info = answer
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
        r.stop_reason = "terminated" if terminated else ("env_limit" if truncated_env else "max_turns")
        return
    r.observation_ids = codec.observation_ids(r.env, obs, False)
    r.ids += r.observation_ids
    # The next action takes at most max_action_tokens, plus an env <eos> if it is truncated.
    if max_tokens is not None and len(r.ids) + max_action_tokens + 1 > max_tokens and not r.prefix:
        r.done, r.truncated, r.stop_reason = True, True, "context"
