"""Hook implementations of ``opdplug-agents``: the environments, registered by name.

Each registered object is the environment class: ``registry.get("environments", "gridnav")``
called with keyword options (``horizon=6, split="eval"``) builds a bare ``gymnasium.Env``
whose ``expert_action()`` and ``replay()`` are directly reachable; its ``gym_id`` attribute
names the same environment for ``gymnasium.make``.
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from .envs import ENVS


@hookimpl
def opd_register_environments(register):
    for name, cls in ENVS.items():
        register(name, cls)
