"""The kernel's own plugin: the ``trylast`` stage implementations that call the component the
config names (``[rollout] sampler``, ``[teacher] scorer``, ``[credit] scheme``), and the
kernel's commands. It knows kinds, never a component by name."""
from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl(trylast=True)
def opd_rollout(ctx, prompts, step):
    opts = ctx.config.rollout
    sampler = ctx.component("samplers", opts.sampler, opts.options, "rollout.sampler")
    batch = sampler(ctx, prompts, step)
    if ctx.config.credit.verifier:  # outcome rewards travel with the rollout
        verifier = ctx.component("verifiers", ctx.config.credit.verifier, ctx.config.credit.verifier_options, "credit.verifier")
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


@hookimpl
def opd_register_commands(register):
    from .commands import KERNEL_COMMANDS

    for name, command in KERNEL_COMMANDS.items():
        register(name, command)
