"""Hook implementations of ``opdplug-drafters``.

* config table ``[drafter]`` (``options.DrafterOptions``);
* drafter kinds ``standalone`` and ``eagle3`` (``kinds``);
* ``opd_configure`` / ``opd_step_end``: acceptance measured while a DistillSpec run trains
  (``distillspec``; only when ``[drafter] eval_every > 0``);
* command ``drafter`` (``cli``): ``opdplug drafter target|train|eval|export``.
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from .distillspec import opd_configure, opd_step_end  # noqa: F401 (hooks)
from .kinds import EAGLE3, STANDALONE
from .options import DrafterOptions


@hookimpl
def opd_addhooks(pluginmanager):
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def opd_add_options(register):
    register("drafter", DrafterOptions)


@hookimpl
def opd_register_drafter_kinds(register):
    register(STANDALONE.name, STANDALONE)
    register(EAGLE3.name, EAGLE3)


@hookimpl
def opd_register_commands(register):
    from .cli import DrafterCommand  # imported lazily: the command line only

    register("drafter", DrafterCommand())
