"""The environments, registered with gymnasium when this package is imported.

============  ==========================  ===================================================
name          gymnasium id                ``horizon`` means
============  ==========================  ===================================================
calc_lookup   ``opdplug/CalcLookup-v0``   people to chain through = dependent lookups (1..11)
gridnav       ``opdplug/GridNav-v0``      shortest-path length in moves (1..40)
swapsort      ``opdplug/SwapSort-v0``     inversions = optimal neighbour swaps (1..45)
============  ==========================  ===================================================

``gymnasium.make("opdplug/CalcLookup-v0", horizon=3)`` gives the env behind gymnasium's usual
wrappers (reach ``expert_action`` and ``replay`` through ``env.unwrapped``); ``ENVS[name](...)``
gives the bare env.
"""
from __future__ import annotations

import gymnasium

from .base import CHARSET, SPLITS, Outcome, ToolTextEnv, split_of
from .calc_lookup import CalcLookupEnv
from .gridnav import GridNavEnv
from .swapsort import SwapSortEnv

ENVS: dict[str, type[ToolTextEnv]] = {cls.name: cls for cls in (CalcLookupEnv, GridNavEnv, SwapSortEnv)}
"""Environment classes by opdplug name; each is called with keyword options."""

for _cls in ENVS.values():
    # Guarded: gymnasium warns when an id is registered twice (e.g. a module reloaded in tests).
    if _cls.gym_id not in gymnasium.registry:
        gymnasium.register(id=_cls.gym_id, entry_point=f"{_cls.__module__}:{_cls.__qualname__}")


def vocabulary() -> list[str]:
    """Every word of every environment here (the union of their ``vocabulary()``), sorted."""
    return sorted({w for cls in ENVS.values() for w in cls.vocabulary()})


__all__ = [
    "CHARSET",
    "ENVS",
    "SPLITS",
    "CalcLookupEnv",
    "GridNavEnv",
    "Outcome",
    "SwapSortEnv",
    "ToolTextEnv",
    "split_of",
    "vocabulary",
]
