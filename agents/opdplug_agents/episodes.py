"""One multi-turn episode as data: its turns, with the exact token ids each side wrote.

An ``Episode`` is what ``run_episodes`` (``opdplug_agents.rollout``) returns and what the
locators, the corrective samplers and ``episodes_to_batch`` read; ``EpisodeSpec`` says which
episode to run and ``FixedTurn`` an action to replay exactly. The token layout is ``textio``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from opdplug.types import PRODUCER_STUDENT, PRODUCER_TEACHER, Prompt

Producer = Literal["student", "teacher", "expert"]
PRODUCERS: tuple[str, ...] = ("student", "teacher", "expert")
PRODUCER_CODES: dict[str, int] = {
    "student": PRODUCER_STUDENT,
    "teacher": PRODUCER_TEACHER,
    "expert": PRODUCER_TEACHER,  # an expert is a teacher that happens to be a program
}
"""Turn producer name -> ``RolloutBatch.producer_B_L`` code."""


def check_producer(producer: str) -> None:
    """A one-line ``ValueError`` unless ``producer`` is one of ``PRODUCERS``."""
    if producer not in PRODUCERS:
        raise ValueError(f"producer must be one of {', '.join(PRODUCERS)}, got {producer!r}")


@dataclass(frozen=True)
class Turn:
    """One turn: the observation the actor saw, and the action it took."""

    observation: str
    """The observation's text."""
    observation_ids: tuple[int, ...]
    """The observation's word ids followed by the marker id (written by the environment)."""
    action_ids: tuple[int, ...]
    """The action's ids exactly as produced, ``<eos>`` included unless ``truncated``."""
    action_text: str
    """The text sent to the environment (``textio.decode_action`` of ``action_ids``)."""
    producer: str
    """Who wrote the action: ``"student"``, ``"teacher"`` or ``"expert"``."""
    action_logprobs: tuple[float, ...]
    """Per action token, its log-prob under the sampling policy at the rollout temperature
    (0 for expert actions and replayed prefix actions without log-probs)."""
    valid: bool
    """Whether the environment accepted the call (``info["valid_action"]``)."""
    truncated: bool = False
    """The action hit the token budget without ``<eos>``; the environment closed it with one
    ``<eos>`` of its own (``closing_ids``)."""
    closing_ids: tuple[int, ...] = ()
    """Environment-written ids after the action: ``(eos,)`` when ``truncated``, else empty."""

    @property
    def token_ids(self) -> tuple[int, ...]:
        """This turn's part of the episode's ids: observation, marker, action, closing."""
        return self.observation_ids + self.action_ids + self.closing_ids


@dataclass(frozen=True)
class Episode:
    """One finished (or stopped) multi-turn episode with its exact token ids."""

    env: str
    """The registered environment's name."""
    seed: int
    """The seed ``env.reset`` was called with."""
    options: dict = field(hash=False)
    """The environment's constructor options (``horizon``, ``split``, ...)."""
    turns: tuple[Turn, ...]
    """The turns taken, in order."""
    success: bool
    """The environment reported success (``info["success"]``) after the last turn."""
    terminated: bool
    """The environment ended the episode (answer given, goal reached, ...)."""
    truncated: bool
    """The episode was cut off: the environment's turn limit, ``max_turns`` or ``max_tokens``."""
    final_observation: str
    """The observation after the last action (not part of ``token_ids``)."""
    bos_ids: tuple[int, ...]
    """``(bos,)``, or empty for a tokenizer without BOS."""
    num_turns: int
    """``len(turns)``."""
    token_ids: tuple[int, ...]
    """``bos_ids`` then every turn's ``token_ids``: the exact sequence a model saw."""
    stop_reason: str = ""
    """Why it stopped: ``terminated`` (the environment ended it), ``env_limit`` (the
    environment's turn limit), ``max_turns``, ``context`` (the next turn could overflow the
    token budget ``max_tokens``: a model's context), "" (not recorded)."""

    def __post_init__(self) -> None:
        if self.num_turns != len(self.turns):
            raise ValueError(f"num_turns = {self.num_turns} but {len(self.turns)} turns")
        expected = self.bos_ids + sum((t.token_ids for t in self.turns), ())
        if self.token_ids != expected:
            raise ValueError("token_ids differ from the concatenation of the turns' ids")

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        """The first observation with BOS and marker: where the first action starts."""
        return self.bos_ids + (self.turns[0].observation_ids if self.turns else ())

    def prompt(self) -> Prompt:
        """The ``Prompt`` this episode answers (the agent task's format)."""
        return Prompt(
            prompt_ids=self.prompt_ids,
            meta={"env": self.env, "seed": self.seed, "options": dict(self.options), "length": self.options.get("horizon")},
        )


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to run."""

    env: str
    """The registered environment's name."""
    seed: int
    """Seed of ``env.reset``."""
    options: dict = field(default_factory=dict, hash=False)
    """Constructor options of the environment (``horizon``, ``split``, ``max_turns``, ...)."""


@dataclass(frozen=True)
class FixedTurn:
    """An action replayed exactly (``prefixes`` of ``run_episodes``)."""

    action_ids: tuple[int, ...]
    """The action's ids (``<eos>`` last, or none for an action that was truncated)."""
    producer: str
    """Who wrote it originally: ``"student"``, ``"teacher"`` or ``"expert"``."""
    action_logprobs: Optional[tuple[float, ...]] = None
    """Its sampling log-probs, if known (else zeros)."""
