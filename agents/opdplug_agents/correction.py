"""Corrective samplers: SCoRe (``agent_score``) and DAgger (``agent_dagger``).

``agent_score`` (SCoRe, Alibaba 2025)
    1. The student plays every prompt's episode (the same draws as the ``agent`` sampler).
    2. A locator (option ``locator``: any registered one, see ``opdplug_agents.locators``) finds
       the earliest wrong student turn k.
    3. The key-step actor (the local teacher model, the environment's expert, or the student
       re-sampling it on-policy for the loss's teacher to score) rewrites ONLY turn k: turns 0..k-1 are replayed exactly (same ids, same log-probs, through
       ``run_episodes(prefixes=...)``), the key-step actor acts at k, the student resumes after.
    4. Steps 2-3 repeat on the new trajectory, searching from k+1 on, at most ``max_repairs``
       times per episode.

    Rows of the batch, in this order:

    * one **corrected trajectory** per prompt: student prefix + key step(s) + student
      continuation (the student's mistaken turns are gone: turn k was rewritten and everything
      after it replayed). Loss on every action token (student and key steps); observations
      never. An episode without a located error is the student's own episode (loss on all of
      it, as in plain agent OPD). ``rewards_B`` = success of the trajectory.
    * with ``short_horizon`` (default), one **short-horizon row** per key step: the verified
      prefix (turns < k, context, no loss) then the key step (loss on it only).
      ``rewards_B`` = the key-step reward (``key_reward``: ``episode`` = the corrected
      trajectory succeeded, ``optimal`` = the key step is optimal by the environment's
      ``is_optimal``, ``one`` = always 1).

    ``key_step_B_L`` marks the key steps' action tokens in both kinds of rows (credit scheme
    ``turn_level`` weights them). Do not set ``[credit] verifier`` with this sampler: the
    built-in would overwrite ``rewards_B`` with the replay success of each row (0 for most
    short-horizon rows).

``agent_dagger``
    The student plays; at each visited state (the history before the student's action t) the
    teacher (model, or ``teacher_actor = "expert"``) gives its own action. One row per labelled
    state: the student's history (turns < t, no loss) followed by the teacher's action at t
    (loss on its tokens only). Rows per episode: every visited state (``states_per_episode =
    0``, T rows for a T-turn episode), or a uniformly drawn subset of ``states_per_episode``
    distinct states (all if the episode is shorter), which bounds the teacher's cost.
    ``rewards_B`` = success of the student episode the state comes from.

Both report through ``opdplug_agents.accounting``: ``teacher_actions`` counts one per action
the teacher model generated (key steps, DAgger labels, teacher-rollout locator continuations),
plus the locator's own calls (``teacher_scorings``, ``judge_calls``); ``teacher_calls`` is
their sum.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import torch

from opdplug.errors import ConfigError
from opdplug.types import Prompt, RolloutBatch

from . import accounting
from .actors import ExpertActor, ModelActor
from .batching import episodes_to_batch
from .episodes import PRODUCERS, Episode, FixedTurn
from .locators import LocatorDeps
from .locators.budget import BudgetedLocator
from .registries import build_locator, episode_env
from .rollout import run_episodes
from .samplers import _action_budget, _specs, codec_of


# ----------------------------------------------------------------------------- SCoRe core
@dataclass
class Correction:
    """What SCoRe did to a batch of episodes."""

    original: list
    """The student's episodes as first played."""
    corrected: list
    """The final trajectories (an original where nothing was located or repaired)."""
    first_errors: list
    """Per episode, the first located error of the original episode (None: none)."""
    key_turns: list
    """Per episode, the turns rewritten by the key-step actor, increasing."""


def _fixed(turns) -> list[FixedTurn]:
    return [FixedTurn(t.action_ids, t.producer, t.action_logprobs) for t in turns]


def correct_episodes(
    specs: Sequence[Any],
    student,
    key_actor,
    locator,
    deps: LocatorDeps,
    tokenizer,
    *,
    max_action_tokens: int,
    temperature: float,
    max_repairs: int,
    generator: Optional[torch.Generator] = None,
    repair_generator: Optional[torch.Generator] = None,
    original: Optional[Sequence[Episode]] = None,
    registry=None,
) -> Correction:
    """SCoRe's loop on the episodes ``specs``.

    :param student: the student's actor (a ``ModelActor``, or any actor in tests).
    :param key_actor: who rewrites a located turn (``ModelActor`` of the teacher, or
        ``ExpertActor``).
    :param locator: an object with ``locate(episodes, deps, start=...)``.
    :param original: the student's episodes if already played (else played here).
    :param max_repairs: rewrites per episode at most (0: locate only).
    :param registry: where the environments are registered (``ctx.registry`` in a run; default:
        the installed plugins').
    """
    if original is None:
        original = run_episodes(specs, student, tokenizer, max_action_tokens=max_action_tokens,
                                temperature=temperature, generator=generator, registry=registry)
    current = list(original)
    n = len(current)
    keys: list[list[int]] = [[] for _ in range(n)]
    errors = locator.locate(current, deps, start=0)
    first = list(errors)
    for repair in range(max_repairs):
        todo = [i for i in range(n) if errors[i] is not None]
        if not todo:
            break
        at = {row: errors[i] for row, i in enumerate(todo)}

        def choose(row: int, turn: int, _at=at):
            return key_actor if turn == _at[row] else student

        redone = run_episodes(
            [specs[i] for i in todo], choose, tokenizer, max_action_tokens=max_action_tokens,
            temperature=temperature, generator=repair_generator,
            prefixes=[_fixed(current[i].turns[: errors[i]]) for i in todo], registry=registry,
        )
        for i, episode in zip(todo, redone):
            current[i] = episode
            keys[i].append(errors[i])
        errors = [None] * n
        if repair + 1 < max_repairs:
            found = locator.locate([current[i] for i in todo], deps, start=[keys[i][-1] + 1 for i in todo])
            for i, k in zip(todo, found):
                errors[i] = k
    return Correction(list(original), current, first, keys)


def _cut(episode: Episode, k: int) -> Episode:
    """The episode up to and including turn k (a short-horizon row)."""
    turns = episode.turns[: k + 1]
    n = len(episode.bos_ids) + sum(len(t.token_ids) for t in turns)
    last = k + 1 >= episode.num_turns
    return dataclasses.replace(
        episode, turns=turns, num_turns=k + 1, token_ids=episode.token_ids[:n],
        success=episode.success if last else False, terminated=episode.terminated if last else False,
        truncated=turns[-1].truncated, final_observation=episode.final_observation if last else episode.turns[k + 1].observation,
    )


def key_step_rewards(correction: Correction, how: str, registry=None) -> list[list[float]]:
    """Per episode, per key step, its reward (``episode``, ``optimal`` or ``one``)."""
    out = []
    for episode, keys in zip(correction.corrected, correction.key_turns):
        if how == "one":
            out.append([1.0] * len(keys))
        elif how == "episode":
            out.append([1.0 if episode.success else 0.0] * len(keys))
        else:
            rewards = []
            for k in keys:
                env = episode_env(episode, registry)
                env.replay([t.action_text for t in episode.turns[:k]])
                rewards.append(1.0 if env.is_optimal(episode.turns[k].action_text) else 0.0)
            out.append(rewards)
    return out


def correction_batch(
    correction: Correction, prompts: Sequence[Prompt], *, pad_id: int, short_horizon: bool = True,
    key_reward: str = "episode", registry=None,
) -> RolloutBatch:
    """The rows of ``agent_score`` (module docstring) as one ``RolloutBatch``."""
    rows: list[Episode] = list(correction.corrected)
    row_prompts = list(prompts)
    row_keys: list[list[int]] = [list(k) for k in correction.key_turns]
    only: list[Optional[int]] = [None] * len(rows)  # short rows: loss on this turn alone
    rewards = [1.0 if e.success else 0.0 for e in correction.corrected]
    if short_horizon:
        for i, (episode, keys, kr) in enumerate(zip(correction.corrected, correction.key_turns,
                                                    key_step_rewards(correction, key_reward, registry))):
            for k, r in zip(keys, kr):
                rows.append(_cut(episode, k))
                row_prompts.append(prompts[i])
                row_keys.append([k])
                only.append(k)
                rewards.append(r)
    batch = episodes_to_batch(rows, train_on=PRODUCERS, pad_id=pad_id, prompts=row_prompts)
    actions = batch.loss_mask_B_L.bool()  # every action token (closing <eos>s are ENV, no loss)
    turn = batch.turn_ids_B_L
    key = torch.zeros_like(actions)
    loss = actions.clone()
    for b, (keys, k_only) in enumerate(zip(row_keys, only)):
        for k in keys:
            key[b] |= actions[b] & (turn[b] == k)
        if k_only is not None:
            loss[b] = actions[b] & (turn[b] == k_only)
    return batch.replace(loss_mask_B_L=loss.long(), key_step_B_L=key,
                         rewards_B=torch.tensor(rewards, dtype=torch.float32))


# ----------------------------------------------------------------------------- samplers
def _teacher_actor(ctx, which: str, sampler: str, temperature: Optional[float] = None):
    if which == "expert":
        return ExpertActor()
    if which == "student":  # on-policy key step: the student re-samples it, the loss's teacher scores it
        return ModelActor(ctx.student_module(), "student", temperature=temperature, top_p=ctx.config.rollout.top_p)
    if ctx.teacher is None:
        raise ConfigError(f"rollout.sampler = {sampler!r} with a teacher actor needs a local teacher; set teacher.path (or use the expert)")
    return ModelActor(ctx.teacher, "teacher", temperature=temperature, top_p=ctx.config.rollout.top_p)


def _student_actor(ctx) -> ModelActor:
    return ModelActor(ctx.student_module(), "student", top_p=ctx.config.rollout.top_p)


def _locator_cache(ctx) -> dict:
    """The run's cache of locator answers (in ``ctx.scratch``; a fresh dict without one)."""
    scratch = getattr(ctx, "scratch", None)
    return {} if scratch is None else scratch.setdefault("agents_locator_cache", {})


@dataclass(frozen=True)
class AgentScore:
    """``agent_score``: SCoRe correction (module docstring). Options: ``[rollout.options]``."""

    locator: str = "expert"
    """A registered earliest-error locator (built in: expert, teacher_logprob, teacher_rollouts,
    llm_judge); the plugin's ``opd_validate`` resolves it before anything loads."""
    locator_options: dict = field(default_factory=dict)
    """The locator's options (e.g. ``{threshold = -1.5}``, ``{url = "http://..."}``)."""
    key_step_actor: Literal["teacher", "expert", "student"] = "teacher"
    """Who rewrites the located turn: the local teacher model, the environment's expert, or the
    student itself (``student``: it re-samples the key step from the verified prefix and the
    loss's teacher scores its own tokens: on-policy, instead of copying the teacher's)."""
    max_repairs: int = 1
    """Rewrites per episode at most (each on the newest trajectory's next error)."""
    short_horizon: bool = True
    """Add a short-horizon row (verified prefix + key step) per key step."""
    key_reward: Literal["episode", "optimal", "one"] = "episode"
    """Reward of a short-horizon row: the corrected trajectory's success, the key step's
    optimality (``is_optimal``), or 1."""
    key_step_temperature: Optional[float] = None
    """Temperature of the key steps (None: the rollout temperature; 0: greedy)."""
    locator_budget: int = 0
    """Episodes the locator is asked about per step at most (0: all); the rest train as plain
    agent OPD rows. Answers are cached across steps (``locators.budget``)."""

    def __post_init__(self):
        if self.max_repairs < 0 or self.locator_budget < 0:
            raise ValueError(f"max_repairs and locator_budget must be >= 0, got {self.max_repairs}, {self.locator_budget}")

    def __call__(self, ctx, prompts, step):
        if not prompts:
            raise ValueError("an agent rollout needs at least one prompt")
        specs = _specs(prompts, "agent_score")
        opts = ctx.config.rollout
        budget = _action_budget(ctx, prompts)
        key_actor = _teacher_actor(ctx, self.key_step_actor, "agent_score", self.key_step_temperature)
        locator = BudgetedLocator(build_locator(self.locator, self.locator_options, "rollout.options.locator", ctx.registry),
                                  _locator_cache(ctx), self.locator_budget)
        deps = LocatorDeps(
            tokenizer=codec_of(ctx), teacher=ctx.teacher, max_action_tokens=budget, temperature=opts.temperature,
            generator=ctx.generator("locator", step, prompts[0].prompt_ids), registry=ctx.registry,
        )
        correction = correct_episodes(
            specs, _student_actor(ctx), key_actor, locator, deps, codec_of(ctx), max_action_tokens=budget,
            temperature=opts.temperature, max_repairs=self.max_repairs,
            generator=ctx.generator("student", step, prompts[0].prompt_ids),
            repair_generator=ctx.generator("score_repair", step, prompts[0].prompt_ids), registry=ctx.registry,
        )
        try:
            batch = correction_batch(correction, prompts, pad_id=codec_of(ctx).pad_id,
                                     short_horizon=self.short_horizon, key_reward=self.key_reward,
                                     registry=ctx.registry)
        except ValueError as exc:
            raise ConfigError(f"rollout.sampler = 'agent_score': {exc}") from None
        repairs = sum(len(k) for k in correction.key_turns)
        accounting.record_locator(ctx, deps)
        accounting.record(
            ctx, first_errors=[k for k in correction.first_errors if k is not None],
            episodes=len(specs), success=sum(e.success for e in correction.original),
            success_after=sum(e.success for e in correction.corrected), rows=batch.batch_size,
            located=sum(k is not None for k in correction.first_errors), repairs=repairs,
            short_rows=batch.batch_size - len(specs),
            teacher_actions=repairs if isinstance(key_actor, ModelActor) and key_actor.producer == "teacher" else 0,
            teacher_tokens=accounting.teacher_action_tokens(correction.corrected),
            expert_actions=repairs if isinstance(key_actor, ExpertActor) else 0,
        )
        return batch


def dagger_states(num_turns: Sequence[int], per_episode: int, generator: Optional[torch.Generator]) -> list[list[int]]:
    """Per episode, the sorted turn indices DAgger labels: all of them (``per_episode = 0``),
    or ``min(per_episode, T)`` distinct ones drawn uniformly."""
    out = []
    for T in num_turns:
        if per_episode <= 0 or per_episode >= T:
            out.append(list(range(T)))
        else:
            out.append(sorted(torch.randperm(T, generator=generator)[:per_episode].tolist()))
    return out


def dagger_episodes(
    episodes: Sequence[Episode], states: Sequence[Sequence[int]], teacher, tokenizer, *,
    max_action_tokens: int, temperature: float, generator: Optional[torch.Generator] = None, registry=None,
) -> tuple[list[Episode], list[int]]:
    """For each chosen state (episode i, turn t): the student's turns < t replayed exactly, then
    the teacher's action at t. Returns the labelled episodes and, per row, its source episode."""
    pairs = [(i, t) for i, ts in enumerate(states) for t in ts]
    out: dict = {}
    for t in sorted({t for _, t in pairs}):  # one batched run per depth (all stop after turn t)
        group = [(i, tt) for i, tt in pairs if tt == t]
        runs = run_episodes(
            [(episodes[i].env, episodes[i].seed, episodes[i].options) for i, _ in group], teacher, tokenizer,
            max_action_tokens=max_action_tokens, max_turns=t + 1, temperature=temperature, generator=generator,
            prefixes=[_fixed(episodes[i].turns[:t]) for i, _ in group], registry=registry,
        )
        out.update(zip(group, runs))
    return [out[p] for p in pairs], [i for i, _ in pairs]


@dataclass(frozen=True)
class AgentDagger:
    """``agent_dagger``: the student's states, the teacher's actions (module docstring)."""

    teacher_actor: Literal["teacher", "expert"] = "teacher"
    """Who labels the states: the local teacher model or the environment's expert."""
    states_per_episode: int = 0
    """States labelled per episode (0: every visited state)."""

    def __post_init__(self):
        if self.states_per_episode < 0:
            raise ValueError(f"states_per_episode must be >= 0, got {self.states_per_episode}")

    def __call__(self, ctx, prompts, step):
        if not prompts:
            raise ValueError("an agent rollout needs at least one prompt")
        specs = _specs(prompts, "agent_dagger")
        opts = ctx.config.rollout
        budget = _action_budget(ctx, prompts)
        teacher = _teacher_actor(ctx, self.teacher_actor, "agent_dagger")
        episodes = run_episodes(specs, _student_actor(ctx), codec_of(ctx), max_action_tokens=budget,
                                temperature=opts.temperature, generator=ctx.generator("student", step, prompts[0].prompt_ids),
                                registry=ctx.registry)
        states = dagger_states([e.num_turns for e in episodes], self.states_per_episode,
                               ctx.generator("dagger_states", step, prompts[0].prompt_ids))
        rows, source = dagger_episodes(episodes, states, teacher, codec_of(ctx), max_action_tokens=budget,
                                       temperature=opts.temperature,
                                       generator=ctx.generator("dagger_teacher", step, prompts[0].prompt_ids),
                                       registry=ctx.registry)
        try:
            batch = episodes_to_batch(rows, train_on=("teacher", "expert"), pad_id=codec_of(ctx).pad_id,
                                      prompts=[prompts[i] for i in source])
        except ValueError as exc:
            raise ConfigError(f"rollout.sampler = 'agent_dagger': {exc}") from None
        batch = batch.replace(rewards_B=torch.tensor([1.0 if episodes[i].success else 0.0 for i in source]))
        accounting.record(
            ctx, episodes=len(episodes), success=sum(e.success for e in episodes), rows=len(rows), dagger_rows=len(rows),
            teacher_actions=len(rows) if isinstance(teacher, ModelActor) else 0,
            teacher_tokens=accounting.teacher_action_tokens(rows),
            expert_actions=len(rows) if isinstance(teacher, ExpertActor) else 0,
        )
        return batch
