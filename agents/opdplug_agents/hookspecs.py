"""The registry kinds ``opdplug-agents`` adds to the kernel (through ``opd_addhooks``).

The plugin registers its own environments and locators through these hooks too, so a
third-party plugin's are found, listed and chosen by name exactly like the built-in ones.
"""
from __future__ import annotations

from opdplug.hookspecs import Register, hookspec


@hookspec
def opd_register_environments(register: Register) -> None:
    """Register multi-turn text environments for agent distillation (``[task.options] env``,
    ``opdplug agent eval --env``).

    :param register: ``register(name, env_class)``; ``env_class(**options)`` builds a bare
        environment (``horizon`` and ``split`` among the options) with ``reset``, ``step``,
        ``close``, the public ``episode_over`` and ``solved``, ``tools`` (tool schemas, or None
        for free-text actions), ``horizon_range`` (or ``horizon_range_for(options)``) and
        ``vocabulary()`` (words for the built-in word-level models; [] for none). Methods that
        need them also use ``expert_action``, ``is_optimal`` and ``replay``, which may raise
        ``opdplug_agents.envs.MissingCapability`` (one line) when the environment has none.
        Subclassing ``ToolTextEnv`` gives all of it; a plain gymnasium text game needs no
        plugin at all (the ``gymnasium`` adapter, ``opdplug_agents.envs.gym_adapter``).
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_locators(register: Register) -> None:
    """Register earliest-error locators (``[rollout.options] locator`` of ``agent_score``).

    :param register: ``register(name, cls)``; ``cls`` is a frozen dataclass of the locator's
        options (``[rollout.options] locator_options``, validated against its fields) whose
        instances answer ``locate(episodes, deps, *, start=None) -> list[Optional[int]]``: per
        episode, the first wrong student turn at or after ``start`` (None: none found). See
        ``opdplug_agents.locators``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_tool_call_formats(register: Register) -> None:
    """Register how chat models write tool calls (``[task.options] tool_format``).

    :param register: ``register(name, cls)``; ``cls`` is a frozen dataclass whose instances
        have ``render(tool, args) -> text`` and ``parse(text) -> (tool, args) | None``. See
        ``opdplug_agents.toolcalls``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_env_adapters(register: Register) -> None:
    """Register callables the ``gymnasium`` environment adapter names in its options
    (``expert``, ``observation``, ``action``; see ``opdplug_agents.envs.gym_adapter``).

    :param register: ``register(name, fn)``: an expert ``fn(env, info) -> str``, an observation
        ``fn(obs, info) -> str`` or an action ``fn(text, env) -> action``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """
