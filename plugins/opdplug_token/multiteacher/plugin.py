"""Hook implementations of multi-teacher OPD (entry point ``multiteacher`` of ``opdplug-token``):
the ``[[teachers]]`` table, the ``multi_teacher`` scorer and the teacher routers."""
from __future__ import annotations

from opdplug.errors import ConfigError
from opdplug.hookspecs import hookimpl

from . import hookspecs
from .routers import ColumnRouter, MixtureRouter
from .scorer import MultiTeacher, TeacherSpec


@hookimpl
def opd_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def opd_add_options(register):
    register("teachers", list[TeacherSpec])


@hookimpl
def opd_register_scorers(register):
    register("multi_teacher", MultiTeacher)


@hookimpl
def opd_register_teacher_routers(register):
    register("column", ColumnRouter, default=True)
    register("mixture", MixtureRouter)


@hookimpl
def opd_validate(ctx):
    """Before anything loads: each teacher's scorer name and options, and the router's."""
    opts = ctx.config.teacher
    scorer = ctx.registry.get("scorers", opts.scorer, "teacher.scorer")
    if scorer is not MultiTeacher:
        return
    built = ctx.registry.build("scorers", opts.scorer, opts.options, "teacher.scorer")
    router = ctx.registry.build("teacher_routers", built.router, built.router_options, "teacher.options.router")
    names = {spec.name for spec in ctx.config.teachers}
    missing = sorted(router.teachers_named() - names)
    if missing:
        raise ConfigError(f"teacher {missing[0]!r} is routed to but not defined: add a [[teachers]] entry named "
                          f"{missing[0]!r} (defined: {', '.join(sorted(names)) or 'none'})")
    for spec in ctx.config.teachers:
        ctx.registry.build("scorers", spec.scorer, spec.options, f"teachers.{spec.name}.scorer")
