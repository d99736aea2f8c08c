"""``opd_validate``: this plugin's names are resolved in the run's registry before anything loads.

The kernel resolves the names of its own tables; the names inside them that only this plugin
knows how to read are checked here, so a typo is one line before a model is loaded or a file
is written:

* ``[task.options] env`` of the ``agent`` task: a registered environment;
* ``[rollout.options] locator`` (and its ``locator_options``) of ``agent_score``: a registered
  locator, its options validated.
"""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from .correction import AgentScore
from .registries import build_locator, env_class
from .task import AgentTask, AgentTaskOptions


@hookimpl
def opd_validate(ctx) -> None:
    config = ctx.config
    if ctx.registry.get("tasks", config.task.name, "task.name") is AgentTask:
        env = dict(config.task.options or {}).get("env", AgentTaskOptions.env)
        env_class(env, ctx.registry, "task.options.env")
    sampler = ctx.component("samplers", config.rollout.sampler, config.rollout.options, "rollout.sampler")
    if isinstance(sampler, AgentScore):
        build_locator(sampler.locator, sampler.locator_options, "rollout.options.locator", ctx.registry)
