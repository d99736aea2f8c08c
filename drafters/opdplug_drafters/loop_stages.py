"""The core loop's stage hooks for drafter kinds that train through it with stages of their own.

A kind whose ``DrafterKind.stages`` is set (``eagle3``: ``eagle3.stages.Eagle3Stages``; a
plugin's kind the same way) is trained by ``opdplug.loop`` itself, exactly like a token-level
student: these hooks hand the loop's backend and stage calls to the kind's stages object when
``[drafter] kind`` names such a kind, and return None (defer to the defaults) otherwise. The
kind is looked up in the registry, never by name, so a third-party kind plugs in the same way.

The stages object has ``load_models(ctx)``, ``rollout(ctx, prompts, step)``, ``score(ctx,
batch)``, ``student_forward(ctx, batch)``, ``loss(ctx, batch, scores, credit, student)`` and
``save_model(ctx, directory)``; optionally ``preflight(ctx)``, ``validate(ctx)``, ``configure(ctx)``
and ``step_end(ctx, step, metrics)`` (``plugin.py`` calls the last three from its own hooks). They follow
the hookspecs of the same names (``opd_*``).
"""
from __future__ import annotations

from typing import Any, Optional

from opdplug.hookspecs import hookimpl

from .kinds import get_kind


def stages_of(ctx) -> Optional[Any]:
    """The stages of the run's drafter kind, or None (no ``[drafter]``, or a kind without)."""
    options = ctx.config.plugins.get("drafter")
    if options is None:
        return None
    factory = getattr(get_kind(ctx.registry, options.kind), "stages", None)
    return factory() if factory is not None else None


def call(ctx, name: str, *args) -> Any:
    """``stages.<name>(ctx, *args)`` when the run's kind has stages with that method, else None."""
    stages = stages_of(ctx)
    method = getattr(stages, name, None) if stages is not None else None
    return method(ctx, *args) if method is not None else None


@hookimpl
def opd_load_models(ctx):
    return call(ctx, "load_models")


@hookimpl
def opd_rollout(ctx, prompts, step):
    return call(ctx, "rollout", prompts, step)


@hookimpl
def opd_score(ctx, batch):
    return call(ctx, "score", batch)


@hookimpl
def opd_student_forward(ctx, batch):
    return call(ctx, "student_forward", batch)


@hookimpl
def opd_loss(ctx, batch, scores, credit, student):
    return call(ctx, "loss", batch, scores, credit, student)


@hookimpl
def opd_save_model(ctx, directory):
    return call(ctx, "save_model", directory)


@hookimpl
def opd_preflight(ctx):
    return call(ctx, "preflight")
