"""The ``[loss]`` table's hooks: its validation, the ``opd_loss`` stage that composes support x
divergence (or estimator) x update, and the self-test before step 0."""
from __future__ import annotations

import math

import torch

from opdplug.context import derive_seed
from opdplug.errors import PreflightError
from opdplug.hookspecs import hookimpl
from opdplug.types import PRODUCER_STUDENT, LossOutput

from . import hookspecs


@hookimpl
def opd_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspecs)


def loss_components(ctx):
    """(support, divergence or estimator, update) named by ``[loss]``, built once per run."""
    opts = ctx.config.loss
    support = ctx.component("supports", opts.support, {}, "loss.support")
    if getattr(support, "uses_estimator", False):
        fn = ctx.component("estimators", opts.estimator, {}, "loss.estimator")
    else:
        fn = ctx.component("divergences", opts.divergence, opts.divergence_options, "loss.divergence")
    update = ctx.component("updates", opts.update, opts.update_options, "loss.update")
    return support, fn, update


@hookimpl
def opd_validate(ctx):
    loss_components(ctx)


@hookimpl(trylast=True)
def opd_loss(ctx, batch, scores, credit, student):
    opts = ctx.config.loss
    support, fn, update = loss_components(ctx)
    mask_B_L = batch.loss_mask_B_L.to(student.hidden_B_L_H.device).bool()
    result = support(fn, student, scores, batch, mask_B_L, top_k=opts.top_k, chunk_size=opts.chunk_size)
    loss_B_L, update_metrics = update(result, batch, scores, credit)
    metrics = {**result.metric_sums, **update_metrics}
    return LossOutput(loss_sum=loss_B_L.sum(), num_tokens=int(mask_B_L.sum()), metrics=metrics)


def needs_self_test(ctx) -> bool:
    """Self-scoring must give ~0 for every divergence-based loss; supervised NLL on teacher or
    reference samples is a cross-entropy, not a divergence, and is exempt. So is a student that
    says ``opd_self_test = False``: one the samplers cannot draw from and whose loss another
    plugin computes (an EAGLE-3 head, which drafts from the target's features)."""
    if getattr(ctx.student_module(), "opd_self_test", True) is False:
        return False
    support, fn, _ = loss_components(ctx)
    if getattr(support, "uses_estimator", False):
        return getattr(fn, "sampler", "student") == "student"
    return True


def self_test(ctx) -> float:
    """The student scored against itself must give a loss of about zero.

    Catches a temperature applied on one side only, misaligned shifts, and divergences that
    are not zero at p = q. Returns the per-token self-loss.
    """
    from opdplug_local.models import model_rollout
    from opdplug_local.scorers import SelfScorer

    hook = ctx.manager.hook
    prompts = ctx.task.prompts(min(4, ctx.config.run.batch_size), seed=derive_seed(ctx.config.run.seed, "preflight"), split="eval")
    batch = model_rollout(
        ctx.student_module(), prompts, producer=PRODUCER_STUDENT,
        max_new_tokens=ctx.config.rollout.max_new_tokens or ctx.task.max_new_tokens(max(p.meta.get("length", 1) for p in prompts)),
        temperature=ctx.config.rollout.temperature, top_p=1.0, tokenizer=ctx.tokenizer,
        generator=ctx.generator("preflight"), on_policy=True,
    )
    if ctx.config.credit.verifier:
        # Constant rewards: a centred reward term is zero, so the self-loss must still be ~0.
        batch = batch.replace(rewards_B=torch.zeros(batch.batch_size))
    with torch.no_grad():
        scores = SelfScorer(chunk_size=ctx.config.loss.chunk_size)(ctx, batch)
        credit = hook.opd_credit(ctx=ctx, batch=batch, scores=scores)
        out = hook.opd_loss(ctx=ctx, batch=batch, scores=scores, credit=credit,
                            student=hook.opd_student_forward(ctx=ctx, batch=batch))
    per_token = float(out.loss_sum) / max(out.num_tokens, 1)
    if not math.isfinite(per_token) or abs(per_token) > 1e-3:
        raise PreflightError(
            f"self-test failed: the student scored against itself gives a loss of {per_token:.3g} per token "
            f"(expected ~0); the loss '{ctx.config.loss.divergence}'/'{ctx.config.loss.update}' or a plugin's stage hook is wrong"
        )
    return per_token


@hookimpl
def opd_preflight(ctx):
    if needs_self_test(ctx):
        return {"self_loss_per_token": self_test(ctx)}
    return None
