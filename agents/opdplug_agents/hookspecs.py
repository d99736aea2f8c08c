"""The registry kinds ``opdplug-agents`` adds to the kernel (through ``opd_addhooks``)."""
from __future__ import annotations

from opdplug.hookspecs import Register, hookspec


@hookspec
def opd_register_environments(register: Register) -> None:
    """Register multi-turn text environments for agent distillation (``[agent] env``).

    :param register: ``register(name, env_factory)``; see ``opdplug_agents.envs.base`` for what
        an environment provides.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """
