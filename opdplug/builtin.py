"""The core's own plugin: the ``trylast`` stage implementations that dispatch by config names,
and the components that need nothing beyond the core (local scorers, the built-in task,
the CLI commands)."""
from __future__ import annotations

import torch

from .errors import ConfigError, TrainingError
from .hookspecs import hookimpl
from .local import score_with_model
from .types import LossOutput, TeacherScores


# ----------------------------------------------------------------------------- stages
@hookimpl(trylast=True)
def opd_rollout(ctx, prompts, step):
    opts = ctx.config.rollout
    sampler = ctx.component("samplers", opts.sampler, opts.options, "rollout.sampler")
    batch = sampler(ctx, prompts, step)
    if ctx.config.credit.verifier:  # outcome rewards travel with the rollout
        verifier = ctx.component("verifiers", ctx.config.credit.verifier, {}, "credit.verifier")
        batch = batch.replace(rewards_B=verifier(ctx, batch))
    return batch


@hookimpl(trylast=True)
def opd_score(ctx, batch):
    opts = ctx.config.teacher
    scorer = ctx.component("scorers", opts.scorer, opts.options, "teacher.scorer")
    return scorer(ctx, batch)


@hookimpl(trylast=True)
def opd_credit(ctx, batch, scores):
    opts = ctx.config.credit
    scheme = ctx.component("credit_schemes", opts.scheme, opts.options, "credit.scheme")
    return scheme(batch, scores)


@hookimpl(trylast=True)
def opd_loss(ctx, batch, scores, credit, student):
    opts = ctx.config.loss
    support = ctx.component("supports", opts.support, {}, "loss.support")
    if getattr(support, "uses_estimator", False):
        fn = ctx.component("estimators", opts.estimator, {}, "loss.estimator")
    else:
        fn = ctx.component("divergences", opts.divergence, opts.divergence_options, "loss.divergence")
    update = ctx.component("updates", opts.update, opts.update_options, "loss.update")
    mask_B_L = batch.loss_mask_B_L.to(student.hidden_B_L_H.device).bool()
    result = support(fn, student, scores, batch, mask_B_L, top_k=opts.top_k, chunk_size=opts.chunk_size)
    loss_B_L, update_metrics = update(result, batch, scores, credit)
    metrics = {**result.metric_sums, **update_metrics}
    return LossOutput(loss_sum=loss_B_L.sum(), num_tokens=int(mask_B_L.sum()), metrics=metrics)


# ----------------------------------------------------------------------------- scorers
class LocalScorer:
    """``local``: the local Hugging Face teacher from ``[teacher] path``, dense scores."""

    def __call__(self, ctx, batch) -> TeacherScores:
        if ctx.teacher is None:
            raise ConfigError("teacher.scorer = 'local' needs teacher.path (a local model directory)")
        return score_with_model(
            ctx.teacher, batch, temperature=ctx.config.rollout.temperature,
            top_k=ctx.config.teacher.top_k, chunk_size=ctx.config.loss.chunk_size,
        )


class SelfScorer:
    """``self``: the student scores its own tokens (no gradient). Every divergence is then ~0:
    the pre-flight self-test, and a sanity check for custom losses."""

    def __call__(self, ctx, batch) -> TeacherScores:
        return score_with_model(
            ctx.student_module(), batch, temperature=ctx.config.rollout.temperature,
            top_k=ctx.config.teacher.top_k, chunk_size=ctx.config.loss.chunk_size,
        )


class NoScorer:
    """``none``: no teacher (supervised training on reference completions, estimator ``nll``)."""

    def __call__(self, ctx, batch) -> TeacherScores:
        return TeacherScores(token_logprobs_B_L=torch.zeros(batch.loss_mask_B_L.shape), temperature=ctx.config.rollout.temperature)


@hookimpl
def opd_register_scorers(register):
    register("local", LocalScorer())
    register("self", SelfScorer())
    register("none", NoScorer())


@hookimpl
def opd_register_tasks(register):
    from .tasks import register_builtin_tasks

    register_builtin_tasks(register)


@hookimpl
def opd_register_commands(register):
    from . import cli

    for name, command in cli.BUILTIN_COMMANDS.items():
        register(name, command)


def require_finite(value: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(value).all():
        raise TrainingError(
            f"{what} is not finite at step {step}; lower run.lr, raise loss.top_k's tail clamp, "
            f"or check the teacher (no checkpoint was written for this step)"
        )

