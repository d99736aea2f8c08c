"""A filter for degenerate rollouts, as a wrapper around ``opd_rollout``.

Rows that repeat themselves, run out of budget, or whose teacher perplexity falls outside
bounds keep their tokens but lose their loss mask: shapes stay fixed (no empty micro-batch),
and the global token count excludes them. The fraction filtered is logged as
``filter/fraction``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from opdplug.hookspecs import hookimpl

SCRATCH = "token.filter"


@dataclass(frozen=True)
class FilterOptions:
    """``[token.filter]``: which rollouts count as degenerate (all checks off by default)."""

    enabled: bool = False
    """Turn the filter on."""
    max_repeat_fraction: float = 1.0
    """Drop a row when more than this fraction of its completion's n-grams are repeats (1: off)."""
    ngram: int = 3
    """n of the repetition check."""
    drop_truncated: bool = False
    """Drop rows that hit max_new_tokens without EOS."""
    min_teacher_ppl: float = 0.0
    """Drop rows whose teacher perplexity is below this floor (degenerate, e.g. loops); 0: off."""
    max_teacher_ppl: float = 0.0
    """Drop rows whose teacher perplexity is above this ceiling (garbage); 0: off."""


@dataclass(frozen=True)
class TokenOptions:
    """``[token]``: options of the opdplug-token plugin."""

    filter: FilterOptions = FilterOptions()
    """The degenerate-rollout filter."""


def repeat_fraction(ids: list[int], n: int) -> float:
    """Fraction of the n-grams of ``ids`` that already occurred earlier in it."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def degenerate_rows(batch, opts: FilterOptions, teacher_token_logprobs_B_L=None) -> torch.Tensor:
    """Bool ``[B]``: rows the filter drops."""
    drop = torch.zeros(batch.batch_size, dtype=torch.bool)
    mask = batch.loss_mask_B_L.bool()
    for i in range(batch.batch_size):
        ids = batch.input_ids_B_L[i][mask[i]].tolist()
        if opts.max_repeat_fraction < 1.0 and repeat_fraction(ids, opts.ngram) > opts.max_repeat_fraction:
            drop[i] = True
        if opts.drop_truncated and batch.truncated_B is not None and bool(batch.truncated_B[i]):
            drop[i] = True
        if teacher_token_logprobs_B_L is not None and mask[i].any():
            nll = -float(teacher_token_logprobs_B_L[i][mask[i]].mean())
            ppl = math.exp(min(nll, 50.0))
            if opts.min_teacher_ppl and ppl < opts.min_teacher_ppl:
                drop[i] = True
            if opts.max_teacher_ppl and ppl > opts.max_teacher_ppl:
                drop[i] = True
    return drop


@hookimpl(wrapper=True)
def opd_rollout(ctx, prompts, step):
    batch = yield
    opts = ctx.config.plugins.get("token", TokenOptions()).filter
    if batch is None or not opts.enabled:
        return batch
    scores = None
    if opts.min_teacher_ppl or opts.max_teacher_ppl:
        with torch.no_grad():
            scores = ctx.manager.hook.opd_score(ctx=ctx, batch=batch)
    drop = degenerate_rows(batch, opts, None if scores is None else scores.token_logprobs_B_L.cpu())
    state = ctx.scratch.setdefault(SCRATCH, {"dropped": 0, "rows": 0})
    state["dropped"] += int(drop.sum())
    state["rows"] += batch.batch_size
    if drop.any():
        batch = batch.replace(loss_mask_B_L=batch.loss_mask_B_L * (~drop)[:, None].long())
    if scores is not None:
        state["scores"] = (batch, scores)  # scored once: opd_score below hands these back
    return batch


@hookimpl(tryfirst=True)
def opd_score(ctx, batch):
    """Hand back the scores the filter already computed for this very batch (firstresult)."""
    cached = ctx.scratch.get(SCRATCH, {}).pop("scores", None)
    if cached is not None and cached[0].input_ids_B_L is batch.input_ids_B_L:
        return cached[1]
    return None


@hookimpl
def opd_step_end(ctx, step, metrics):
    state = ctx.scratch.pop(SCRATCH, None)
    if state and state["rows"]:
        metrics["filter/fraction"] = state["dropped"] / state["rows"]
