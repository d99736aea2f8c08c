"""Checks before step 0 that a teacher with another tokenizer and the loss support fit together.

What the config alone cannot tell (the tokenizers and the scorer are loaded by now) is a
one-line ``ConfigError`` here, before the run directory is written, instead of a traceback from
the support at step 0: a support that compares ids across vocabularies, ``xtok_project`` over a
tokenizer that is not byte-level, and a support that reads fields the scorer does not send
(``xtok_full`` with a scorer that sends only the top-k, such as ``sglang``)."""
from __future__ import annotations

import torch

from opdplug.context import derive_seed
from opdplug.errors import ConfigError
from opdplug.types import PRODUCER_STUDENT, RolloutBatch

ROWS = 8
"""Student samples the alignment report and the scores probe are taken on."""

SUPPORTS_ACROSS_VOCABULARIES = "sampled, xtok_project, xtok_topk, xtok_full, their _uld variants, or uld"


def refuse_id_support(scorer, support_name: str, support) -> None:
    """A support that compares the two models id by id, with a teacher of another tokenizer."""
    if getattr(scorer, "aligns", lambda: False)() and not getattr(support, "any_vocabulary", False):
        raise ConfigError(
            f"loss.support = {support_name!r} compares the two models id by id, but the teacher has another "
            f"tokenizer: use {SUPPORTS_ACROSS_VOCABULARIES}"
        )


def refuse_unprojectable(scorer, support_name: str, support) -> None:
    """``xtok_project`` re-expresses the teacher's entries through each token's bytes, which a
    tokenizer that is not byte-level (SentencePiece pieces, WordPiece) does not give."""
    if not getattr(support, "needs_byte_level", False) or not hasattr(scorer, "not_byte_level"):
        return
    problem = scorer.not_byte_level()
    if problem:
        raise ConfigError(
            f"loss.support = {support_name!r} needs byte-level tokenizers on both sides, but {problem}: "
            f"use xtok_topk_uld, xtok_topk or sampled"
        )


def student_samples(ctx) -> RolloutBatch:
    """The student's samples of a few held-out prompts (seeded apart from training)."""
    from opdplug_local.models import model_rollout

    prompts = ctx.task.prompts(ROWS, seed=derive_seed(ctx.config.run.seed, "alignment"), split="eval")
    budget = ctx.config.rollout.max_new_tokens or ctx.task.max_new_tokens(max(p.meta.get("length", 1) for p in prompts))
    return model_rollout(ctx.student_module(), prompts, producer=PRODUCER_STUDENT, max_new_tokens=budget,
                         temperature=ctx.config.rollout.temperature, top_p=1.0, tokenizer=ctx.tokenizer,
                         generator=ctx.generator("alignment"), on_policy=True)


def refuse_unmet_scores(ctx, scorer, support_name: str, support, batch: RolloutBatch) -> None:
    """Score ``batch`` once with the configured scorer and ask the support whether those scores
    carry what it reads. A probe rather than a declaration, so any scorer (a plugin's too) is
    checked by what it actually sends."""
    if not hasattr(support, "unmet"):
        return
    with torch.no_grad():
        scores = scorer(ctx, batch)
    if hasattr(scorer, "metrics"):  # per-step counters start at step 0 without the probe's rows
        scorer.metrics()
    problem = support.unmet(scores)
    if problem:
        raise ConfigError(f"loss.support = {support_name!r} {problem} (teacher.scorer = {ctx.config.teacher.scorer!r})")
