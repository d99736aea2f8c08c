"""The environments this plugin ships, registered with gymnasium when this package is imported.

============  ==========================  ===================================================
name          gymnasium id                ``horizon`` means
============  ==========================  ===================================================
calc_lookup   ``opdplug/CalcLookup-v0``   people to chain through = dependent lookups (1..11)
gridnav       ``opdplug/GridNav-v0``      shortest-path length in moves (1..40)
swapsort      ``opdplug/SwapSort-v0``     inversions = optimal neighbour swaps (1..45)
============  ==========================  ===================================================

The plugin registers them through ``opd_register_environments`` like any other plugin's, and
every consumer finds environments by name in the registry (``opdplug_agents.registries``),
never here: ``BUILTIN`` is only this plugin's own list. ``gymnasium.make("opdplug/CalcLookup-v0",
horizon=3)`` gives the env behind gymnasium's usual wrappers (reach ``expert_action`` and
``replay`` through ``env.unwrapped``); the registered class called with options gives the bare
env.

An environment of another plugin subclasses ``ToolTextEnv`` (see ``base``); ``Outcome``,
``template_words`` and ``int_option`` are there for it.
"""
from __future__ import annotations

import gymnasium

from .base import CHARSET, SPLITS, Outcome, ToolTextEnv, int_option, split_of, template_words
from .calc_lookup import CalcLookupEnv
from .gridnav import GridNavEnv
from .gym_adapter import GymnasiumTextEnv, MissingCapability
from .swapsort import SwapSortEnv

BUILTIN: tuple[type[ToolTextEnv], ...] = (CalcLookupEnv, GridNavEnv, SwapSortEnv)
"""The built-in tool environments (by their ``name``)."""
REGISTERED: tuple[type, ...] = (*BUILTIN, GymnasiumTextEnv)
"""What this plugin registers as environments: the built-in ones and the ``gymnasium`` adapter
(any gymnasium text game by id), through the same hook a third-party plugin uses."""

for _cls in BUILTIN:
    # Guarded: gymnasium warns when an id is registered twice (e.g. a module reloaded in tests).
    if _cls.gym_id not in gymnasium.registry:
        gymnasium.register(id=_cls.gym_id, entry_point=f"{_cls.__module__}:{_cls.__qualname__}")


def vocabulary() -> list[str]:
    """Every word of this plugin's environments (the union of their ``vocabulary()``), sorted."""
    return sorted({w for cls in BUILTIN for w in cls.vocabulary()})


__all__ = [
    "BUILTIN",
    "CHARSET",
    "SPLITS",
    "CalcLookupEnv",
    "GridNavEnv",
    "GymnasiumTextEnv",
    "MissingCapability",
    "REGISTERED",
    "Outcome",
    "SwapSortEnv",
    "ToolTextEnv",
    "int_option",
    "split_of",
    "template_words",
    "vocabulary",
]
