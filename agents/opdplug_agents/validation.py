"""``opd_validate``: this plugin's names are resolved in the run's registry before anything loads.

The kernel resolves the names of its own tables; the names inside them that only this plugin
knows how to read are checked here, so a typo is one line before a model is loaded or a file
is written:

* ``[task.options]`` of the ``agent`` task: ``env`` a registered environment, the horizons in
  its range, ``env_options`` ones it takes;
* ``[rollout.options] locator`` (and its ``locator_options``) of ``agent_score``: a registered
  locator, its options validated.
"""
from __future__ import annotations

from opdplug.config import from_dict
from opdplug.errors import ConfigError
from opdplug.hookspecs import hookimpl

from .correction import AgentScore
from .registries import build_locator
from .task import AgentTask, AgentTaskOptions


@hookimpl
def opd_validate(ctx) -> None:
    config = ctx.config
    if ctx.registry.get("tasks", config.task.name, "task.name") is AgentTask:
        options = from_dict(AgentTaskOptions, dict(config.task.options or {}), "[task.options]")
        try:
            options.check_env(ctx.registry)
        except ValueError as exc:  # the same one line the task would raise once models are loaded
            raise ConfigError(f"task {config.task.name!r}: {exc}") from None
    sampler = ctx.component("samplers", config.rollout.sampler, config.rollout.options, "rollout.sampler")
    if isinstance(sampler, AgentScore):
        build_locator(sampler.locator, sampler.locator_options, "rollout.options.locator", ctx.registry)
