"""Rollout samplers: who writes the completions the student trains on.

``on_policy``   the student samples (OPD).
``teacher``     the local teacher samples (off-policy distillation / SFT on teacher samples).
``reference``   the task's reference completions (supervised data, no model sampling).
``lambda_mix``  GKD's lambda: a fraction of each batch sampled by the student, the rest
                off-policy, with an off-policy cold start and a linear ramp between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from opdplug.errors import ConfigError
from opdplug_local.models import merge_rollouts, model_rollout, pad_id_of, reference_rollout
from opdplug.types import PRODUCER_STUDENT, PRODUCER_TEACHER, Prompt, RolloutBatch


def _budget(ctx, prompts: Sequence[Prompt]) -> list[int]:
    """One completion budget per prompt: ``rollout.max_new_tokens``, or the task's budget for
    that prompt's own length. Per row, not per batch, so a row's completion does not depend on
    which prompts share its micro-batch or process."""
    opts = ctx.config.rollout
    if opts.max_new_tokens > 0:
        return [opts.max_new_tokens] * len(prompts)
    return [ctx.task.max_new_tokens(p.meta.get("length", 1)) for p in prompts]


def student_rollout(ctx, prompts: Sequence[Prompt], step: int, stream: str = "student", *,
                    keep_prefill_graph: bool = False) -> RolloutBatch:
    """The student samples with its current weights at the rollout temperature, each row from
    its own seed (``ctx.row_seeds``): the same tokens however the global batch is split.
    ``keep_prefill_graph``: its training forward of this batch reuses the prompt prefill."""
    opts = ctx.config.rollout
    return model_rollout(
        ctx.student_module(), prompts, producer=PRODUCER_STUDENT, max_new_tokens=_budget(ctx, prompts),
        temperature=opts.temperature, top_p=opts.top_p, tokenizer=ctx.tokenizer,
        generator=None, row_seeds=ctx.row_seeds(prompts, stream, step), on_policy=True, keep_prefill_graph=keep_prefill_graph,
    )


def teacher_rollout(ctx, prompts: Sequence[Prompt], step: int) -> RolloutBatch:
    """The local teacher samples (off-policy for the student), per-row seeds as above."""
    if ctx.teacher is None:
        raise ConfigError("rollout.sampler needs teacher samples but there is no local teacher; set teacher.path")
    opts = ctx.config.rollout
    return model_rollout(
        ctx.teacher, prompts, producer=PRODUCER_TEACHER, max_new_tokens=_budget(ctx, prompts),
        temperature=opts.temperature, top_p=opts.top_p, tokenizer=ctx.tokenizer,
        generator=None, row_seeds=ctx.row_seeds(prompts, "teacher", step), on_policy=False,
    )


@dataclass(frozen=True)
class OnPolicy:
    """The student samples every completion."""

    def __call__(self, ctx, prompts, step):
        # The training forward of this batch reuses the prefill only where no graph would wait for
        # a later micro-batch's backward (memory) and no wrapper sits between (one process).
        reuse = torch.is_grad_enabled() and ctx.num_processes == 1 and ctx.config.run.grad_accum == 1
        return student_rollout(ctx, prompts, step, keep_prefill_graph=reuse)


@dataclass(frozen=True)
class TeacherSamples:
    """The teacher samples every completion (SFT on teacher samples when paired with ``nll``)."""

    def __call__(self, ctx, prompts, step):
        return teacher_rollout(ctx, prompts, step)


@dataclass(frozen=True)
class Reference:
    """The task's reference completions (ground truth)."""

    def __call__(self, ctx, prompts, step):
        return reference_rollout(prompts, pad_id_of(ctx.tokenizer))


@dataclass(frozen=True)
class LambdaMix:
    """GKD's lambda: ``round(lambda * B)`` rows of each micro-batch are sampled by the student, the
    rest come from ``off_policy`` ("teacher" samples or "reference" completions). Which rows are
    on-policy is drawn from the run's seeded generator.

    Schedule: lambda is 0 for the first ``cold_start_steps`` steps (the off-policy cold start of
    "Rethinking OPD"), then rises linearly to ``lmbda`` over ``ramp_steps`` steps (0: at once).
    lambda = 0 never calls the student's sampler; lambda = 1 never touches off-policy data.
    """

    lmbda: float = 0.5
    """Fraction of on-policy sequences after the schedule."""
    off_policy: Literal["teacher", "reference"] = "teacher"
    """Where the other sequences come from."""
    cold_start_steps: int = 0
    """Steps of purely off-policy data first."""
    ramp_steps: int = 0
    """Steps over which lambda rises from 0 to ``lmbda`` after the cold start."""

    def __post_init__(self):
        if not 0.0 <= self.lmbda <= 1.0:
            raise ConfigError(f"rollout.options.lmbda must be in [0, 1], got {self.lmbda}")

    def lambda_at(self, step: int) -> float:
        if step < self.cold_start_steps:
            return 0.0
        if self.ramp_steps <= 0:
            return self.lmbda
        return self.lmbda * min(1.0, (step - self.cold_start_steps + 1) / self.ramp_steps)

    def __call__(self, ctx, prompts, step):
        B = len(prompts)
        n_on = int(round(self.lambda_at(step) * B))
        order = torch.randperm(B, generator=ctx.generator("lambda_mix", step, prompts[0].prompt_ids if prompts else ())).tolist()
        on_rows, off_rows = sorted(order[:n_on]), sorted(order[n_on:])
        parts = []
        if on_rows:
            parts.append((on_rows, student_rollout(ctx, [prompts[i] for i in on_rows], step)))
        if off_rows:
            off_prompts = [prompts[i] for i in off_rows]
            if self.off_policy == "teacher":
                parts.append((off_rows, teacher_rollout(ctx, off_prompts, step)))
            else:
                parts.append((off_rows, reference_rollout(off_prompts, pad_id_of(ctx.tokenizer))))
        if len(parts) == 1:
            return parts[0][1]
        return merge_rollouts(prompts, parts, pad_id_of(ctx.tokenizer))
