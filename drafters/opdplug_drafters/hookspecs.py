"""The registry kind ``opdplug-drafters`` adds to the kernel (through ``opd_addhooks``)."""
from __future__ import annotations

from opdplug.hookspecs import Register, hookspec


@hookspec
def opd_register_drafter_kinds(register: Register) -> None:
    """Register speculative-decoding drafter kinds (``[drafter] kind``): standalone, EAGLE-3, yours.

    :param register: ``register(name, drafter_kind)``; see ``opdplug_drafters.kinds`` for the
        protocol (``load``, ``recognises``, ``validate_options``, ``train``, ``export``):
        ``opdplug drafter train|eval|export`` and ``[drafter] kind`` dispatch through it.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """
