"""A locator's calls, budgeted and cached (``agent_score``'s ``locator_budget`` and cache).

``BudgetedLocator(locator, cache, max_episodes)`` answers ``locate`` like the locator it wraps,
but

* looks each episode up in ``cache`` first (key: environment, seed, options, the episode's exact
  ids and where the search starts), so an episode seen before costs no teacher call (small
  episode spaces repeat episodes; SCoRe re-locates after each repair);
* asks the wrapped locator about at most ``max_episodes`` uncached episodes per call (0: no
  limit); the others get None (no error located: they train as plain agent OPD rows).

``deps.stats`` counts ``locator_cache_hits`` and ``locator_skipped``.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from ..episodes import Episode
from .base import LocatorDeps, Start, start_turns

MAX_CACHE = 100_000
"""Entries kept at most (the oldest are dropped first)."""


def episode_cache_key(episode: Episode, start: int) -> tuple:
    """What makes two locator questions the same."""
    return episode.env, episode.seed, json.dumps(episode.options, sort_keys=True, default=str), episode.token_ids, start


class BudgetedLocator:
    """Wraps a locator with a cache and a per-call budget (module docstring)."""

    def __init__(self, locator: Any, cache: dict, max_episodes: int = 0) -> None:
        self.locator, self.cache, self.max_episodes = locator, cache, int(max_episodes)

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        starts = start_turns(start, len(episodes))
        keys = [episode_cache_key(e, s) for e, s in zip(episodes, starts)]
        out: list[Optional[int]] = [None] * len(episodes)
        todo = []
        for i, key in enumerate(keys):
            if key in self.cache:
                out[i] = self.cache[key]
                deps.stats["locator_cache_hits"] += 1
            else:
                todo.append(i)
        if self.max_episodes and len(todo) > self.max_episodes:
            deps.stats["locator_skipped"] += len(todo) - self.max_episodes
            todo = todo[: self.max_episodes]
        if todo:
            found = self.locator.locate([episodes[i] for i in todo], deps, start=[starts[i] for i in todo])
            for i, k in zip(todo, found):
                out[i] = k
                self.cache[keys[i]] = k
            while len(self.cache) > MAX_CACHE:
                self.cache.pop(next(iter(self.cache)))
        return out
