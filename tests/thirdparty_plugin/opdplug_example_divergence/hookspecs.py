"""The hookspec this plugin adds to opdplug (through ``opd_addhooks``): a registry kind of its own,
``jeffreys_balances``, which other plugins may fill too."""
from opdplug.hookspecs import Register, hookspec, registry_kind


@hookspec
@registry_kind("Jeffreys balance")
def opd_register_jeffreys_balances(register: Register) -> None:
    """Register how Jeffreys weighs its two KLs (``[loss.divergence_options] balance``).

    :param register: ``register(name, Balance(forward=..., reverse=...), default=False)``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """
