"""Hook implementations of multi-teacher OPD (entry point ``multiteacher`` of ``opdplug-token``):
the ``[[teachers]]`` table, the ``multi_teacher`` scorer and the teacher routers."""
from __future__ import annotations

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
