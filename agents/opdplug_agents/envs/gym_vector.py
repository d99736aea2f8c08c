"""A batch of ``gymnasium`` adapter episodes stepping through gymnasium's vector API.

``run_episodes`` asks the pool for a batch's environments; for the ``gymnasium`` adapter with
``vector = "sync"`` (the default) or ``"async"`` the pool builds one ``VectorGroup``: a
``gymnasium.vector.SyncVectorEnv`` or ``AsyncVectorEnv`` of as many games as the batch has
episodes, and one ``VectorSlot`` per episode. A slot is the adapter (same messages, success,
expert, split search, turn limit) whose game is a sub-environment: ``reset_slots`` and
``step_slots`` reset and step every slot of a round in ONE vector call.

Autoreset: gymnasium 1.x vector environments by default reset a finished sub-environment on
the NEXT ``step`` (``AutoresetMode.SAME_STEP``), ignoring that step's action. Here they run in
``AutoresetMode.SAME_STEP``: the step that ends an episode resets the game at once and returns
the last observation and info under ``final_obs`` / ``final_info``, which the slot reads. (The
installed gymnasium 1.4.0's ``AsyncVectorEnv`` without shared memory, which text spaces need,
does not clear its next-step flag on ``reset``: a slot that ended in one batch would be reset
again, seed-less, on the first step of the next. Same-step autoreset keeps no such flag.) A slot
whose episode is over (or that does not act this round) still takes part in every vector step,
with a filler action (another slot's action of that round: always in the action space); its
results are dropped. Each batch starts with a full ``reset`` of the vector environment with
each episode's seed (the adapter's split search retries only the slots that need it, through
``reset_mask``), so a slot plays exactly the episode a plain instance plays for the same seed.

A registered ``action``/``expert`` callable gets the sub-environment with ``"sync"``; with
``"async"`` the games live in worker processes and it gets a stand-in carrying the single
observation and action spaces. Replay needs a plain instance (locators build their own).
"""
from __future__ import annotations

import functools
import importlib
from types import SimpleNamespace
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array, iterate


def slot_info(infos: dict, i: int) -> dict:
    """Sub-environment ``i``'s info from a vector info dict (the ``_key`` masks say which keys it
    set; numpy scalars become Python ones, as a plain instance returns them)."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get("_" + key)
        if mask is not None and not mask[i]:
            continue
        if isinstance(value, dict):
            out[key] = slot_info(value, i)
        else:
            item = value[i]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out


class VectorGroup:
    """``n`` slots of one adapter configuration over one gymnasium vector environment
    (``adapter``: the adapter class, ``gym_adapter.GymnasiumTextEnv`` or a subclass)."""

    def __init__(self, adapter: Any, options: dict, n: int, registry: Any = None) -> None:
        if n < 1:
            raise ValueError(f"a vector group needs at least one episode, got {n}")
        if registry is not None:
            options = {**options, "registry": registry}
        self.slots = [VectorSlot(self, i, adapter, options) for i in range(n)]
        first = self.slots[0]
        self.mode = first.vector
        fns = [functools.partial(make_game, first.module, first.id, first.gym_kwargs) for _ in range(n)]
        try:
            if self.mode == "async":
                self.vec = AsyncVectorEnv(fns, shared_memory=False, autoreset_mode=AutoresetMode.SAME_STEP)
            else:
                self.vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        except Exception as exc:  # noqa: BLE001 - a game the vector API cannot batch: one line
            raise ValueError(f"gymnasium {first.id}: vector = {self.mode!r} failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); set vector = \"none\"") from None
        spaces = SimpleNamespace(observation_space=self.vec.single_observation_space,
                                 action_space=self.vec.single_action_space)
        for i, slot in enumerate(self.slots):
            slot.env = self.vec.envs[i] if self.mode == "sync" else spaces
        self.released = 0
        """Slots given back to the pool since the last acquire (all back: the group is idle)."""

    @property
    def n(self) -> int:
        return len(self.slots)

    def reset_slots(self, seeds: dict[int, int], split: str = "") -> dict[int, tuple]:
        """Reset slot ``i`` to its split's first episode at or after ``seeds[i]``, every slot in
        one vector ``reset`` (slots not in ``seeds`` keep their seed-less episode); per slot what
        ``reset`` returns."""
        out: dict[int, tuple] = {}
        pending = {i: 0 for i in seeds}
        first = True
        while pending:
            if max(pending.values()) >= self.slots[0].max_attempts:
                raise self.slots[min(pending)].no_episode(split or self.slots[min(pending)].split)
            seed_list = [self.slots[i].attempt_seed(seeds[i], pending[i]) if i in pending else None for i in range(self.n)]
            mask = np.array([i in pending for i in range(self.n)], dtype=np.bool_)
            options = None if first and mask.all() else {"reset_mask": mask}
            obs, infos = self.vec.reset(seed=seed_list, options=options)
            first = False
            for i, o in enumerate(iterate(self.vec.observation_space, obs)):
                if i not in pending:
                    continue
                slot = self.slots[i]
                started = slot.start(seed_list[i], o, slot_info(infos, i), split or slot.split)
                if started is None:
                    pending[i] += 1
                else:
                    out[i] = started
                    del pending[i]
        return out

    def step_slots(self, texts: dict[int, str]) -> dict[int, tuple]:
        """Slot ``i`` takes action ``texts[i]``, every live slot in one vector ``step``; per slot
        what ``step`` returns."""
        out: dict[int, tuple] = {}
        actions: list[Any] = [None] * self.n
        for i, text in texts.items():
            slot = self.slots[i]
            over = slot.over()
            if over is not None:
                out[i] = over
            else:
                actions[i] = slot.action(text)
        live = [i for i, a in enumerate(actions) if a is not None]
        if not live:
            return out
        filler = actions[live[0]]
        actions = [filler if a is None else a for a in actions]
        space = self.vec.single_action_space
        obs, rewards, terminated, truncated, infos = self.vec.step(concatenate(space, actions, create_empty_array(space, self.n)))
        for i, o in enumerate(iterate(self.vec.observation_space, obs)):
            if i in live:
                info = slot_info(infos, i)
                if terminated[i] or truncated[i]:  # reset in the same step: the episode's end is in final_*
                    o, info = info["final_obs"], info["final_info"]
                out[i] = self.slots[i].stepped(o, float(rewards[i]), bool(terminated[i]), bool(truncated[i]), info)
        return out

    def close(self) -> None:
        self.vec.close()


def make_game(module: str, gym_id: str, kwargs: dict) -> Any:
    """``gymnasium.make(gym_id, **kwargs)`` after importing ``module`` (a top-level function, so
    that ``AsyncVectorEnv`` can build the games with it in its worker processes)."""
    if module:
        importlib.import_module(module)
    return gymnasium.make(gym_id, disable_env_checker=True, **kwargs)


def VectorSlot(group: VectorGroup, index: int, adapter: Any, options: dict) -> Any:
    """Slot ``index`` of ``group``: an instance of the adapter class whose game is the group's
    sub-environment ``index`` (``reset``/``step`` of one slot alone go through the group too)."""
    slot = adapter(**options, _make=False)
    slot.slot_group, slot.slot = group, index
    slot.reset = functools.partial(_reset_one, slot)
    slot.step = functools.partial(_step_one, slot)
    slot.close = lambda: None  # the group closes the games
    slot.replay = functools.partial(_no_replay, slot)
    return slot


def _reset_one(slot: Any, *, seed=None, options=None):
    split = dict(options or {}).get("split", slot.split)
    return slot.slot_group.reset_slots({slot.slot: seed}, split)[slot.slot]


def _step_one(slot: Any, text: str):
    return slot.slot_group.step_slots({slot.slot: text})[slot.slot]


def _no_replay(slot: Any, actions: list) -> str:
    raise RuntimeError(f"gymnasium {slot.id}: a vector slot cannot replay; replay on a plain instance (make_env)")
