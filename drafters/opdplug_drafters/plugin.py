"""Hook implementations of ``opdplug-drafters``.

* registry kind ``drafter_kinds`` (``hookspecs``), filled here with ``standalone`` and
  ``eagle3`` (``builtin_kinds``); other distributions register theirs the same way;
* config table ``[drafter]`` (``options.DrafterOptions``), whose kind and kind options
  ``opd_validate`` resolves against the registry;
* ``opd_configure`` / ``opd_step_end``: acceptance measured while a DistillSpec run trains
  (``distillspec``; only when ``[drafter] eval_every > 0``);
* the backend and stage hooks of a kind that trains through the core loop with stages of its
  own (``loop_stages``: ``eagle3``, or a plugin's kind with ``DrafterKind.stages``);
* command ``drafter`` (``cli``): ``opdplug drafter target|train|eval|export``.
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from . import distillspec, loop_stages
from .builtin_kinds import EAGLE3, STANDALONE
from .kinds import get_kind, kind_options
from .loop_stages import (  # noqa: F401 (hooks)
    opd_load_models, opd_loss, opd_preflight, opd_rollout, opd_save_model, opd_score, opd_student_forward,
)
from .options import DrafterOptions


@hookimpl
def opd_addhooks(pluginmanager):
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def opd_add_options(register):
    register("drafter", DrafterOptions)


@hookimpl
def opd_validate(ctx):
    options = ctx.config.plugins.get("drafter")
    if options is not None:
        kind_options(get_kind(ctx.registry, options.kind), options)
        loop_stages.call(ctx, "validate")


@hookimpl
def opd_configure(ctx):
    distillspec.opd_configure(ctx)
    loop_stages.call(ctx, "configure")


@hookimpl
def opd_step_end(ctx, step, metrics):
    loop_stages.call(ctx, "step_end", step, metrics)
    distillspec.opd_step_end(ctx, step, metrics)


@hookimpl
def opd_register_drafter_kinds(register):
    register(STANDALONE.name, STANDALONE)
    register(EAGLE3.name, EAGLE3)


@hookimpl
def opd_register_commands(register):
    from .cli import DrafterCommand  # imported lazily: the command line only

    register("drafter", DrafterCommand())
