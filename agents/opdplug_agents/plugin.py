"""Hook implementations of ``opdplug-agents``: environments, the agent task, its samplers.

* environments: each registered object is the environment class: ``registry.get("environments",
  "gridnav")`` called with keyword options (``horizon=6, split="eval"``) builds a bare
  ``gymnasium.Env`` whose ``expert_action()`` and ``replay()`` are directly reachable; its
  ``gym_id`` attribute names the same environment for ``gymnasium.make``.
* task ``agent`` (``opdplug_agents.task``): prompts are first observations of episodes.
* samplers ``agent``, ``agent_teacher``, ``agent_expert`` (``opdplug_agents.samplers``): who
  acts in the episodes, and whose tokens carry loss.
* verifier ``agent``: episode success by replay.
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from . import samplers
from .envs import ENVS
from .task import AgentTask


@hookimpl
def opd_register_environments(register):
    for name, cls in ENVS.items():
        register(name, cls)


@hookimpl
def opd_register_tasks(register):
    register("agent", AgentTask)


@hookimpl
def opd_register_samplers(register):
    register("agent", samplers.AgentOnPolicy)
    register("agent_teacher", samplers.AgentTeacher)
    register("agent_expert", samplers.AgentExpert)


@hookimpl
def opd_register_verifiers(register):
    register("agent", samplers.AgentVerifier)
