"""Environment instances reused across episodes, and closed.

``run_episodes`` takes each episode's environment from a pool and gives it back when the batch
is done; the next batch resets it instead of building a new one (an environment that starts an
interpreter or loads data pays that once). ``EnvPool(reuse=False)`` builds a fresh instance per
episode and closes it after (the old behaviour, kept for comparisons:
``bench/agents_env_reuse.py``). ``shared_pool()`` is the process's pool, closed at exit.
"""
from __future__ import annotations

import atexit
import json
from typing import Any, Optional

from .registries import make_env, registry_or_installed


class EnvPool:
    """Idle instances by (registry, environment name, options)."""

    def __init__(self, reuse: bool = True, max_idle: int = 256) -> None:
        self.reuse = reuse
        """Keep released instances for the next episode (False: close them)."""
        self.max_idle = max_idle
        """Idle instances kept per key at most (more are closed)."""
        self.built = 0
        """Instances built so far (what reuse saves)."""
        self._idle: dict[tuple, list] = {}

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

    def release(self, env: Any, name: str, options: dict, registry: Optional[Any] = None) -> None:
        """Give ``env`` back: kept for reuse, or closed."""
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
