"""Rollout samplers and a verifier for the ``agent`` task: whole episodes as one batch row each.

``agent``          the student acts every turn; loss on its tokens (plain agent OPD with a
                   ``local`` teacher scoring every student token of every turn).
``agent_teacher``  the local teacher acts; loss on the teacher's tokens (off-policy data).
``agent_expert``   the environment's expert acts; loss on its tokens (behaviour cloning).

Each reads the episodes to play from the prompts' ``meta`` (``opdplug_agents.task``), samples
at ``[rollout] temperature``/``top_p`` with a per-action budget of ``[rollout] max_new_tokens``
(0: the task's ``max_new_tokens(horizon)``) and attaches the success of each episode as
``rewards_B``.

Every agent sampler reports what it spent through ``opdplug_agents.accounting`` (logged as
``agent/*`` metrics each step): episodes, their success, rows, teacher actions (one per action
the local teacher generates), expert actions, and the derived ``teacher_calls``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from opdplug.errors import ConfigError
from opdplug.types import Prompt, RolloutBatch

from . import accounting
from .actors import ExpertActor, ModelActor
from .batching import episodes_to_batch
from .dialogue import as_codec
from .rollout import run_episodes


def _specs(prompts: Sequence[Prompt], sampler: str):
    specs = []
    for p in prompts:
        meta = p.meta
        if not all(k in meta for k in ("env", "seed", "options")):
            raise ConfigError(f"rollout.sampler = {sampler!r} plays environment episodes: use [task] name = \"agent\"")
        specs.append((meta["env"], meta["seed"], meta["options"]))
    return specs


def codec_of(ctx):
    """The run's codec: the agent task's (its chat settings), else one for the run's tokenizer."""
    return getattr(ctx.task, "codec", None) or as_codec(ctx.tokenizer)


def context_budget(ctx) -> Optional[int]:
    """Tokens an episode may reach: ``[task.options] max_context_tokens``, else the student's
    ``max_position_embeddings``, else no limit."""
    opts = getattr(ctx.task, "options", None)
    if getattr(opts, "max_context_tokens", 0):
        return int(opts.max_context_tokens)
    config = getattr(ctx.student_module(), "config", None)
    return getattr(config, "max_position_embeddings", None)


def _action_budget(ctx, prompts: Sequence[Prompt]) -> int:
    opts = ctx.config.rollout
    if opts.max_new_tokens > 0:
        return opts.max_new_tokens
    return ctx.task.max_new_tokens(max(p.meta.get("length", 1) for p in prompts))


def agent_rollout(ctx, prompts: Sequence[Prompt], step: int, actor: str, sampler: str) -> RolloutBatch:
    """Play the prompts' episodes with ``actor`` (``"student"``, ``"teacher"`` or ``"expert"``)
    acting every turn; loss on that actor's tokens."""
    if not prompts:
        raise ValueError("an agent rollout needs at least one prompt")
    specs = _specs(prompts, sampler)
    if actor == "student":
        acting = ModelActor(ctx.student_module(), "student")
    elif actor == "teacher":
        if ctx.teacher is None:
            raise ConfigError(f"rollout.sampler = {sampler!r} needs a local teacher; set teacher.path")
        acting = ModelActor(ctx.teacher, "teacher")
    else:
        acting = ExpertActor()
    opts = ctx.config.rollout
    if isinstance(acting, ModelActor) and opts.top_p != 1.0:
        acting = ModelActor(acting.model, acting.producer, top_p=opts.top_p)
    episodes = run_episodes(
        specs, acting, codec_of(ctx), max_action_tokens=_action_budget(ctx, prompts),
        temperature=opts.temperature, generator=ctx.generator(actor, step, prompts[0].prompt_ids),
        registry=ctx.registry, max_tokens=context_budget(ctx),
    )
    actions = sum(e.num_turns for e in episodes)
    accounting.record_stops(ctx, episodes)
    accounting.record(
        ctx, episodes=len(episodes), success=sum(e.success for e in episodes), rows=len(episodes),
        teacher_actions=actions if actor == "teacher" else 0, expert_actions=actions if actor == "expert" else 0,
        teacher_tokens=accounting.teacher_action_tokens(episodes),
    )
    try:
        return episodes_to_batch(episodes, train_on=(actor,), pad_id=codec_of(ctx).pad_id, prompts=prompts)
    except ValueError as exc:  # the task's prompt ids and the replayed episodes disagree
        raise ConfigError(f"rollout.sampler = {sampler!r}: {exc}") from None


@dataclass(frozen=True)
class AgentOnPolicy:
    """The student acts in every turn of every episode (agent OPD)."""

    def __call__(self, ctx, prompts, step):
        return agent_rollout(ctx, prompts, step, "student", "agent")


@dataclass(frozen=True)
class AgentTeacher:
    """The local teacher acts in every turn (off-policy episodes, loss on its tokens)."""

    def __call__(self, ctx, prompts, step):
        return agent_rollout(ctx, prompts, step, "teacher", "agent_teacher")


@dataclass(frozen=True)
class AgentExpert:
    """The environment's expert acts in every turn (behaviour cloning, loss on its tokens)."""

    def __call__(self, ctx, prompts, step):
        return agent_rollout(ctx, prompts, step, "expert", "agent_expert")


@dataclass(frozen=True)
class AgentVerifier:
    """``[credit] verifier = "agent"``: episode success, by replaying each row's actions (all
    tokens after the prompt, observations included) in its environment."""

    def __call__(self, ctx, batch) -> torch.Tensor:
        rewards = []
        for i, prompt in enumerate(batch.prompts):
            n, start = int(batch.attention_mask_B_L[i].sum()), int(batch.prompt_lens_B[i])
            rewards.append(float(ctx.task.verify(prompt, batch.input_ids_B_L[i, start:n].tolist())))
        return torch.tensor(rewards, dtype=torch.float32)
