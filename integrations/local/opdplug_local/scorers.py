"""The local scorers: ``local`` (the teacher from ``[teacher] path``), ``self`` (the student
scores itself) and ``none`` (no teacher: supervised training on reference completions)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from opdplug.errors import ConfigError
from opdplug.types import TeacherScores

from .models import score_with_model


@dataclass(frozen=True)
class LocalScorer:
    """``local``: the local Hugging Face teacher from ``[teacher] path``, dense scores."""

    chunk_size: int = 1024
    """Tokens per chunk of the lm-head when the top-k and token log-probs are taken."""

    def __call__(self, ctx, batch) -> TeacherScores:
        if ctx.teacher is None:
            raise ConfigError("teacher.scorer = 'local' needs teacher.path (a local model directory)")
        return score_with_model(
            ctx.teacher, batch, temperature=ctx.config.rollout.temperature,
            top_k=ctx.config.teacher.top_k, chunk_size=self.chunk_size,
        )


@dataclass(frozen=True)
class SelfScorer:
    """``self``: the student scores its own tokens (no gradient). Every divergence is then ~0:
    the pre-flight self-test, and a sanity check for custom losses."""

    chunk_size: int = 1024
    """Tokens per chunk of the lm-head."""

    def __call__(self, ctx, batch) -> TeacherScores:
        scores = score_with_model(
            ctx.student_module(), batch, temperature=ctx.config.rollout.temperature,
            top_k=ctx.config.teacher.top_k, chunk_size=self.chunk_size,
        )
        return scores.replace(scored_by_teacher=False)


class NoScorer:
    """``none``: no teacher (supervised training on reference completions, estimator ``nll``)."""

    def __call__(self, ctx, batch) -> TeacherScores:
        return TeacherScores(token_logprobs_B_L=torch.zeros(batch.loss_mask_B_L.shape),
                             temperature=ctx.config.rollout.temperature, scored_by_teacher=False)
