"""The ``teacher_logprob`` locator: the first student turn the teacher finds too unlikely."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Sequence

import torch

from opdplug_local import sampling
from opdplug.errors import ConfigError

from ..actors import ModelActor
from ..batching import episodes_to_batch
from ..episodes import PRODUCERS, Episode
from .base import LocatorDeps, Start, start_turns, student_turns


@torch.no_grad()
def teacher_action_logprobs(model, episodes: Sequence[Episode], tokenizer, *, temperature: float = 1.0) -> list:
    """Per episode, per turn, the model's per-token log-probs of the turn's exact action ids
    (the environment's closing ``<eos>`` of a truncated action excluded). One forward pass over
    the batch of episodes."""
    if not episodes:
        return []
    pad = getattr(tokenizer, "pad_id", None)  # a codec knows its pad (a tokenizer may have none)
    batch = episodes_to_batch(episodes, train_on=PRODUCERS, pad_id=tokenizer.pad_token_id if pad is None else pad)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        lp_B_L = sampling.forward_logprobs(
            model, batch.input_ids_B_L.to(device), batch.attention_mask_B_L.to(device), temperature
        ).cpu()
    finally:
        model.train(was_training)
    out = []
    for b, episode in enumerate(episodes):
        pos, turns = len(episode.bos_ids), []
        for turn in episode.turns:
            pos += len(turn.observation_ids)
            turns.append(lp_B_L[b, pos:pos + len(turn.action_ids)].tolist())
            pos += len(turn.action_ids) + len(turn.closing_ids)
        out.append(turns)
    return out


@dataclass(frozen=True)
class TeacherLogprobLocator:
    """``teacher_logprob``: the first student turn whose teacher log-prob is too low.

    The teacher scores every episode's exact ids once (``teacher_action_logprobs``); a turn's
    score is the ``reduce`` (``mean`` or ``min``) of its action tokens' log-probs (``<eos>``
    included); the first checkable turn with a score below ``threshold`` is the error.
    """

    name: ClassVar[str] = "teacher_logprob"
    """The name it is registered under."""
    threshold: float = -1.0
    """Log-prob below which a turn counts as wrong (mean -1.0: about e^-1 = 0.37 per token)."""
    reduce: Literal["mean", "min"] = "mean"
    """How a turn's token log-probs become one score."""
    temperature: float = 1.0
    """Temperature of the teacher's log-probs."""

    def __post_init__(self):
        if not self.threshold <= 0.0:
            raise ValueError(f"teacher_logprob threshold must be <= 0 (a log-prob), got {self.threshold}")
        if self.reduce not in ("mean", "min"):
            raise ValueError(f"teacher_logprob reduce must be 'mean' or 'min', got {self.reduce!r}")

    def turn_scores(self, episodes: Sequence[Episode], deps: LocatorDeps) -> list[list[float]]:
        """Per episode, per turn, the reduced teacher log-prob of the action."""
        if deps.scorer is not None:
            token_lps = deps.scorer(episodes)
        else:
            model = deps.teacher.model if isinstance(deps.teacher, ModelActor) else deps.teacher
            if not isinstance(model, torch.nn.Module):
                raise ConfigError("locator 'teacher_logprob' needs a local teacher model; set teacher.path")
            token_lps = teacher_action_logprobs(model, episodes, deps.tokenizer, temperature=self.temperature)
            deps.stats["teacher_scorings"] += len(episodes)
            deps.stats["teacher_tokens"] += sum(len(e.token_ids) for e in episodes)
        reduce = (lambda v: sum(v) / len(v)) if self.reduce == "mean" else min
        return [[reduce(v) if v else 0.0 for v in turns] for turns in token_lps]

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        starts = start_turns(start, len(episodes))
        todo = [i for i, (e, s) in enumerate(zip(episodes, starts)) if student_turns(e, s)]
        out: list[Optional[int]] = [None] * len(episodes)
        if todo:
            scores = self.turn_scores([episodes[i] for i in todo], deps)
            for i, turn_scores in zip(todo, scores):
                out[i] = next((t for t in student_turns(episodes[i], starts[i]) if turn_scores[t] < self.threshold), None)
        return deps.record(out)
