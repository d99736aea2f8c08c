"""Who acts in an episode: a local model, the environment's expert, or a program.

``run_episodes`` (``opdplug_agents.rollout``) takes one actor for every turn, or a callable
choosing one per ``(episode_index, turn)``: SCoRe lets the teacher act at one turn only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union


@dataclass(frozen=True, eq=False)
class ModelActor:
    """A local Hugging Face causal LM that samples actions (eq=False: one actor per object)."""

    model: Any
    """The model (plain or wrapped; only forward calls are made)."""
    producer: str = "student"
    """Recorded as the turns' producer: ``"student"`` or ``"teacher"``."""
    temperature: Optional[float] = None
    """Sampling temperature; None takes ``run_episodes``' ``temperature``."""
    top_p: float = 1.0
    """Nucleus mass (1 disables)."""


@dataclass(frozen=True, eq=False)
class ExpertActor:
    """The environment's expert (``env.expert_action()``): log-probs 0, producer ``"expert"``."""

    producer: str = "expert"
    """Recorded as the turns' producer."""


@dataclass(frozen=True, eq=False)
class PolicyActor:
    """A program that acts: ``policy(env, turn) -> action text`` (e.g. a scripted or noisy
    student in tests and benchmarks). Log-probs 0, like the expert's; ``env`` is the running
    bare environment (``expert_action()`` and ``is_optimal()`` are there to use)."""

    policy: Callable[[Any, int], str]
    """Called with the environment and the turn index (from 0)."""
    producer: str = "student"
    """Recorded as the turns' producer."""


Actor = Union[ModelActor, ExpertActor, PolicyActor]
ActorChoice = Union[Actor, Callable[[int, int], Actor]]
"""One actor for every turn, or ``choose(episode_index, turn) -> Actor``."""
