"""Hook implementations for the rollout side of ``opdplug-token``: samplers, teachers,
verifiers, the plugin's config table and the degenerate-rollout filter (re-exported from
``filters``). ``plugin.py`` re-exports everything here so one entry point registers it all."""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from . import samplers, teachers
from .options import LossOptions
from .filters import TokenOptions, opd_rollout, opd_score, opd_step_end  # noqa: F401 (hooks)


@hookimpl
def opd_add_options(register):
    register("token", TokenOptions)
    register("loss", LossOptions)


@hookimpl
def opd_register_samplers(register):
    register("on_policy", samplers.OnPolicy, default=True)
    register("teacher", samplers.TeacherSamples)
    register("reference", samplers.Reference)
    register("lambda_mix", samplers.LambdaMix)


@hookimpl
def opd_register_scorers(register):
    register("privileged_context", teachers.PrivilegedContext)
    register("base_model", teachers.BaseModel)


@hookimpl
def opd_configure(ctx):
    """Reject ``teacher.scorer = "base_model"`` without a LoRA student before anything runs."""
    opts = ctx.config.teacher
    if opts.scorer in ctx.registry.components["scorers"]:
        scorer = ctx.component("scorers", opts.scorer, opts.options, "teacher.scorer")
        if isinstance(scorer, teachers.BaseModel):
            scorer.check(ctx)


@hookimpl
def opd_register_verifiers(register):
    register("task", teachers.TaskVerifier)
