"""The registry kind multi-teacher OPD adds (through ``opd_addhooks``)."""
from __future__ import annotations

from opdplug.hookspecs import Register, hookspec, registry_kind


@hookspec
@registry_kind("teacher router")
def opd_register_teacher_routers(register: Register) -> None:
    """Register rules that send each prompt to its teachers (``[teacher.options] router``).

    :param register: ``register(name, cls)``; ``cls`` is a frozen dataclass whose fields are the
        router's options (``[teacher.options.router_options]``); an instance is called as
        ``router(prompt) -> {teacher name: weight}`` (weights > 0, summing to 1), and
        ``router.teachers_named()`` returns every teacher name it can route to (checked
        against ``[[teachers]]`` before step 0); optionally ``router.mixtures()`` returns the sets
        of teachers it mixes within one prompt (each checked against the teachers' tokenizers
        before step 0).
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """
