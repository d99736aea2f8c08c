"""Environment instances reused across episodes, and closed.

``run_episodes`` takes each episode's environment from a pool and gives it back when the batch
is done; the next batch resets it instead of building a new one (an environment that starts an
interpreter or loads data pays that once). ``EnvPool(reuse=False)`` builds a fresh instance per
episode and closes it after (the old behaviour, kept for comparisons:
``bench/agents_env_reuse.py``). ``shared_pool()`` is the process's pool, closed at exit.

``acquire_batch`` gives a whole batch its instances at once: the episodes of one configuration
of an environment that steps through a vector API (its factory's ``vector_group``: the
``gymnasium`` adapter's ``vector = "sync"|"async"``) get the slots of one group, reused as a
unit; ``reset_batch`` and ``step_batch`` then reset and step every slot of a group in one call.
"""
from __future__ import annotations

import atexit
import json
from typing import Any, Optional, Sequence

from .registries import env_class, make_env, registry_or_installed


class EnvPool:
    """Idle instances by (registry, environment name, options)."""

    def __init__(self, reuse: bool = True, max_idle: int = 256) -> None:
        self.reuse = reuse
        """Keep released instances for the next episode (False: close them)."""
        self.max_idle = max_idle
        """Idle instances kept per key at most (more are closed)."""
        self.max_idle_groups = 4
        """Idle vector groups kept per key at most."""
        self.built = 0
        """Instances built so far (what reuse saves)."""
        self._idle: dict[tuple, list] = {}
        self._idle_groups: dict[tuple, list] = {}

    @staticmethod
    def _key(name: str, options: dict, registry: Any) -> tuple:
        return id(registry), name, json.dumps(options, sort_keys=True, default=str)

    def acquire(self, name: str, options: dict, registry: Optional[Any] = None) -> Any:
        """An instance of ``name`` with ``options`` (reset it before use)."""
        registry = registry_or_installed(registry)
        idle = self._idle.get(self._key(name, options, registry))
        if self.reuse and idle:
            return idle.pop()
        self.built += 1
        return make_env(name, dict(options), registry)

    def acquire_batch(self, items: Sequence[tuple[str, dict]], registry: Optional[Any] = None) -> list:
        """An instance per ``(name, options)`` of ``items`` (reset them before use, e.g. with
        ``reset_batch``); the items of one configuration that steps through a vector API share
        one group (its slots, in order)."""
        registry = registry_or_installed(registry)
        out: list = [None] * len(items)
        by_key: dict[tuple, list[int]] = {}
        for j, (name, options) in enumerate(items):
            by_key.setdefault(self._key(name, options, registry), []).append(j)
        for key, where in by_key.items():
            name, options = items[where[0]]
            group = self._group(key, name, options, len(where), registry)
            for j, k in enumerate(where):
                out[k] = group.slots[j] if group is not None else self.acquire(name, options, registry)
        return out

    def _group(self, key: tuple, name: str, options: dict, n: int, registry: Any) -> Any:
        """An idle vector group of ``n`` slots for ``key``, a new one, or None (no vector API)."""
        idle = self._idle_groups.get(key, [])
        for group in idle if self.reuse else ():
            if group.n == n:
                idle.remove(group)
                return group
        make = getattr(env_class(name, registry), "vector_group", None)
        group = make(dict(options), n, registry) if make is not None else None
        self.built += n if group is not None else 0
        return group

    def release(self, env: Any, name: str, options: dict, registry: Optional[Any] = None) -> None:
        """Give ``env`` back: kept for reuse, or closed (a vector slot: its group, once all its
        slots are back)."""
        group = getattr(env, "slot_group", None)
        if group is not None:
            group.released += 1
            if group.released == group.n:
                group.released = 0
                idle = self._idle_groups.setdefault(self._key(name, options, registry_or_installed(registry)), [])
                if self.reuse and len(idle) < self.max_idle_groups:
                    idle.append(group)
                else:
                    group.close()
            return
        idle = self._idle.setdefault(self._key(name, options, registry_or_installed(registry)), [])
        if self.reuse and len(idle) < self.max_idle:
            idle.append(env)
        else:
            _close(env)

    def close(self) -> None:
        """Close every idle instance."""
        for idle in self._idle.values():
            for env in idle:
                _close(env)
        self._idle.clear()
        for groups in self._idle_groups.values():
            for group in groups:
                group.close()
        self._idle_groups.clear()


def reset_batch(envs: Sequence[Any], seeds: Sequence[Optional[int]]) -> list:
    """``env.reset(seed=seed)`` for each pair; the slots of one vector group in one call."""
    return _per_slot_group(envs, seeds, lambda env, seed: env.reset(seed=seed), "reset_slots")


def step_batch(envs: Sequence[Any], texts: Sequence[str]) -> list:
    """``env.step(text)`` for each pair; the slots of one vector group in one call."""
    return _per_slot_group(envs, texts, lambda env, text: env.step(text), "step_slots")


def _per_slot_group(envs: Sequence[Any], args: Sequence[Any], alone, group_method: str) -> list:
    """``alone(env, arg)`` for a plain environment; the slots of one vector group (``env.slot_group``)
    gathered into one ``group.<group_method>({slot: arg})`` call. Results in the order of ``envs``."""
    out: list = [None] * len(envs)
    groups: dict[int, tuple[Any, dict]] = {}
    for k, (env, arg) in enumerate(zip(envs, args)):
        group = getattr(env, "slot_group", None)
        if group is None:
            out[k] = alone(env, arg)
        else:
            groups.setdefault(id(group), (group, {}))[1][env.slot] = (k, arg)
    for group, slots in groups.values():
        results = getattr(group, group_method)({i: arg for i, (_, arg) in slots.items()})
        for i, result in results.items():
            out[slots[i][0]] = result
    return out


def _close(env: Any) -> None:
    close = getattr(env, "close", None)
    if close is not None:
        close()


_SHARED: list[EnvPool] = []


def shared_pool() -> EnvPool:
    """The process's pool (built on first use, closed at exit)."""
    if not _SHARED:
        _SHARED.append(EnvPool())
        atexit.register(_SHARED[0].close)
    return _SHARED[0]
