"""Hook implementations of ``opdplug-agents``: environments, locators, the agent task, its samplers.

* registry kinds ``environments`` and ``locators`` (``opdplug_agents.hookspecs``), which this
  plugin fills like any other plugin would: nothing in the package reads a closed list.
* environments (``opdplug_agents.envs.BUILTIN``): each registered object is the environment
  class: ``registry.get("environments", "gridnav")`` called with keyword options (``horizon=6,
  split="eval"``) builds a bare ``gymnasium.Env`` whose ``expert_action()`` and ``replay()`` are
  directly reachable; its ``gym_id`` attribute names the same environment for ``gymnasium.make``.
* locators (``opdplug_agents.locators.BUILTIN``): earliest-error locators by name.
* task ``agent`` (``opdplug_agents.task``): prompts are first observations of episodes.
* samplers ``agent``, ``agent_teacher``, ``agent_expert`` (``opdplug_agents.samplers``): who
  acts in the episodes, and whose tokens carry loss.
* verifier ``agent``: episode success by replay.
* samplers ``agent_score`` (SCoRe correction) and ``agent_dagger`` (``opdplug_agents.correction``).
* ``opd_validate``: the agent task's environment and ``agent_score``'s locator are resolved in
  the run's registry before anything loads (``opdplug_agents.validation``).
* credit schemes ``turn_level`` and ``discounted_episode`` (``opdplug_agents.credit``).
* ``opd_score`` (a wrapper that only counts) and ``opd_step_end``: the ``agent/*`` metrics of
  ``opdplug_agents.accounting`` (teacher calls, successes, first-error positions).
* command ``agent`` (``opdplug_agents.cli``): ``opdplug agent train|eval|teacher``.
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from . import correction, credit, envs, locators, samplers, toolcalls
from .accounting import opd_score, opd_step_end  # noqa: F401 (hooks)
from .task import AgentTask
from .validation import opd_validate  # noqa: F401 (hook)


@hookimpl
def opd_addhooks(pluginmanager):
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def opd_register_environments(register):
    for cls in envs.REGISTERED:
        register(cls.name, cls)


@hookimpl
def opd_register_tool_call_formats(register):
    for cls in toolcalls.BUILTIN:
        register(cls.name, cls)


@hookimpl
def opd_register_env_adapters(register):
    """None built in: the kind exists for third-party games (``gymnasium`` adapter options)."""


@hookimpl
def opd_register_locators(register):
    for cls in locators.BUILTIN:
        register(cls.name, cls)


@hookimpl
def opd_register_tasks(register):
    register("agent", AgentTask)


@hookimpl
def opd_register_samplers(register):
    register("agent", samplers.AgentOnPolicy)
    register("agent_teacher", samplers.AgentTeacher)
    register("agent_expert", samplers.AgentExpert)
    register("agent_score", correction.AgentScore)
    register("agent_dagger", correction.AgentDagger)


@hookimpl
def opd_register_verifiers(register):
    register("agent", samplers.AgentVerifier)


@hookimpl
def opd_register_credit_schemes(register):
    register("turn_level", credit.TurnLevel)
    register("discounted_episode", credit.DiscountedEpisode)


@hookimpl
def opd_register_commands(register):
    from . import cli  # imported lazily: the command line only

    for name, command in cli.COMMANDS.items():
        register(name, command)
