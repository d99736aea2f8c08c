"""Hook implementations of ``opdplug-token``: they only wire the pure maths into the registries.

A flat list of hook functions; each registry hook registers classes (frozen dataclasses) whose
fields are the component's options: the core instantiates ``cls(**options)``.
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from . import credit, divergences, estimators, group_credit, supports, updates


@hookimpl
def opd_register_divergences(register):
    register("forward_kl", divergences.ForwardKL)
    register("reverse_kl", divergences.ReverseKL)
    register("jsd", divergences.GeneralizedJSD)
    register("tvd", divergences.TVD)
    register("skew_kl", divergences.SkewKL)
    register("skew_reverse_kl", divergences.SkewReverseKL)
    register("alpha", divergences.AlphaDivergence)
    register("akl", divergences.AKL)
    register("todi", divergences.ToDi)
    register("entropy_aware", divergences.EntropyAware)


@hookimpl
def opd_register_estimators(register):
    register("k1", estimators.K1)
    register("k2", estimators.K2)
    register("k3", estimators.K3)
    register("nll", estimators.NLL)


@hookimpl
def opd_register_supports(register):
    register("sampled", supports.Sampled)
    register("student_topk", supports.StudentTopK)
    register("teacher_topk", supports.TeacherTopK)
    register("full", supports.Full)


@hookimpl
def opd_register_updates(register):
    register("direct", updates.Direct)
    register("reinforce", updates.Reinforce)
    register("advantage", updates.Advantage)
    register("ppo_clip", updates.PPOClip)


@hookimpl
def opd_register_credit_schemes(register):
    register("per_token", credit.PerToken, default=True)
    register("discounted", credit.Discounted)
    register("token_importance", credit.TokenImportance)
    register("reward_plus_kl", credit.RewardPlusKL)
    register("grpo", group_credit.GRPO)
    register("grpo_teacher_kl", group_credit.GRPOTeacherKL)
    register("grpo_teacher_shaping", group_credit.GRPOTeacherShaping)


# The [loss] table and its stage, and the rollout side, live in their own modules.
from .loss_stage import opd_addhooks, opd_loss, opd_preflight, opd_validate  # noqa: E402,F401

# The rollout side (samplers, teachers, verifiers, config table, filter) lives in its own module.
from .rollout_hooks import (  # noqa: E402,F401
    opd_add_options,
    opd_configure,
    opd_register_samplers,
    opd_register_scorers,
    opd_register_verifiers,
    opd_rollout,
    opd_score,
    opd_step_end,
)
