"""Supports: over which outcomes a divergence is evaluated at each trained position.

A support is a frozen dataclass (no options) called as

    support(fn, student, scores, batch, mask_B_L, *, top_k, chunk_size) -> SupportResult

where ``fn`` is a divergence (``div(student_logp_N_S, teacher_logp_N_S) -> value_N``) or, for
``sampled`` (class attribute ``uses_estimator = True``), an estimator
(``est(student_logq_N, teacher_logp_N) -> value_N``).

* ``sampled``: the token in the batch, through an estimator (k1/k2/k3/nll).
* ``student_topk``: the student's top-k ids plus one tail bucket (K + 1 outcomes per side).
* ``teacher_topk``: the teacher's top-k ids plus one tail bucket (K + 1 outcomes per side).
* ``full``: the whole vocabulary (dense teacher only).

Memory: only masked positions are gathered (``N`` tokens), and they are processed ``chunk_size``
at a time. Each chunk computes ``logits = hidden @ W.T / temperature`` for the student (and the
teacher when dense) under ``torch.utils.checkpoint`` (non-reentrant) whenever there is more than
one chunk, so the backward pass recomputes one chunk's ``[chunk, V]`` logits at a time instead of
keeping all of them: peak extra memory is O(chunk_size * V), never O(B * L * V). Diagnostics are computed under
``no_grad`` after the differentiable part, so checkpoint's early stopping skips them when it
recomputes.

Temperature: both sides' logits are divided by ``student.temperature`` (the one used when
sampling); sparse teacher log-probs must have been computed at the same temperature
(``scores.temperature``), otherwise a ValueError is raised. Gradients reach the student's hidden
states and lm_head only: teacher tensors are detached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from opdplug.types import RolloutBatch, StudentOutputs, TeacherScores

from .metrics import complement_logsumexp, compute_dtype, entropy, floor_logp, kl, log1mexp, topk_overlap

__all__ = ["SupportResult", "Sampled", "StudentTopK", "TeacherTopK", "Full"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class SupportResult:
    """What a support hands to an update rule."""

    values_B_L: Tensor
    """Per-token divergence (or estimator value), with grad; 0 where ``mask_B_L`` is False."""
    student_token_logprobs_B_L: Tensor
    """Student log-prob of the token at each position, at the temperature, with grad; 0 off-mask."""
    mask_B_L: Tensor
    """The positions the values were computed on (bool)."""
    metric_sums: dict = field(default_factory=dict)
    """Token-summed diagnostics over masked tokens (python floats): reverse_kl, forward_kl,
    student_entropy, teacher_entropy, topk_overlap, tail_mass, clamped (a count)."""


# ----------------------------------------------------------------------------- shared plumbing
@dataclass(frozen=True)
class _Gathered:
    """The masked positions of one micro-batch, flattened to N tokens."""

    mask_B_L: Tensor
    tokens_N: Tensor
    student_hidden_N_H: Tensor
    teacher_hidden_N_H: Optional[Tensor]
    vocab: int
    """Common vocabulary size (the larger lm_head; the smaller side is padded with -inf)."""
    temperature: float


def _gather(student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch, mask_B_L: Tensor) -> _Gathered:
    """Check the temperature, select the masked positions, detach the teacher."""
    if not math.isclose(float(scores.temperature), float(student.temperature), rel_tol=1e-6, abs_tol=1e-9):
        raise ValueError(
            f"teacher scores were computed at temperature {scores.temperature} but the loss runs at "
            f"{student.temperature}: one temperature must be used for sampling, scoring and the loss"
        )
    device = student.hidden_B_L_H.device
    mask = mask_B_L.to(device).bool()
    vocab = student.lm_head_V_H.shape[0]
    teacher_hidden = None
    if scores.is_dense:
        teacher_hidden = scores.hidden_B_L_H.to(device)[mask].detach()
        vocab = max(vocab, scores.lm_head_V_H.shape[0])
    return _Gathered(
        mask_B_L=mask,
        tokens_N=batch.input_ids_B_L.to(device)[mask],
        student_hidden_N_H=student.hidden_B_L_H[mask],
        teacher_hidden_N_H=teacher_hidden,
        vocab=vocab,
        temperature=float(student.temperature),
    )


def _logp(hidden_C_H: Tensor, lm_head_V_H: Tensor, temperature: float, vocab: int) -> Tensor:
    """log softmax(hidden @ W.T / temperature) ``[C, vocab]`` in at least float32.

    The matmul runs in the model dtype (as the forward pass would); the softmax is upcast. A
    smaller vocabulary is padded with -inf columns (tokens that side can never emit).
    """
    logits_C_V = (hidden_C_H @ lm_head_V_H.T).to(compute_dtype(hidden_C_H.dtype)) / temperature
    if logits_C_V.shape[-1] < vocab:
        logits_C_V = F.pad(logits_C_V, (0, vocab - logits_C_V.shape[-1]), value=float("-inf"))
    return torch.log_softmax(logits_C_V, dim=-1)


def _upcast(x: Tensor) -> Tensor:
    """Sparse teacher numbers in the compute dtype (at least float32, float64 kept)."""
    return x.to(compute_dtype(x.dtype))


def _token_logp(logp_C_V: Tensor, tokens_C: Tensor) -> Tensor:
    """The log-prob of each position's own token ``[C]``."""
    return logp_C_V.gather(-1, tokens_C[:, None]).squeeze(-1)


def _with_tail(logp_C_K: Tensor, tail_C: Tensor) -> Tensor:
    """Append the tail bucket: a distribution over K + 1 outcomes ``[C, K + 1]``."""
    return torch.cat([logp_C_K, tail_C[:, None].to(logp_C_K.dtype)], dim=-1)


def _pair_metrics(logq_C_S: Tensor, logp_C_S: Tensor) -> dict[str, Tensor]:
    """Token-summed reverse and forward KL between two distributions on the same support."""
    dtype = compute_dtype(logq_C_S.dtype)
    lq, lp = floor_logp(logq_C_S.to(dtype)), floor_logp(logp_C_S.to(dtype))
    return {"reverse_kl": kl(lq, lp).sum(), "forward_kl": kl(lp, lq).sum()}


def _map_chunks(fn: Callable, per_token: dict[str, Tensor], params: tuple, chunk_size: int):
    """Run ``fn(chunk_dict, *params) -> (outputs tuple, metrics dict)`` over token chunks.

    With gradients on and more than one chunk, each call is checkpointed, so only one chunk's
    ``[chunk, V]`` intermediates are alive in forward and in backward. Returns the concatenated outputs and
    the summed metrics (0-dim tensors).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    n = next(iter(per_token.values())).shape[0]
    outs: list[tuple[Tensor, ...]] = []
    sums: dict[str, Tensor] = {}
    # A lone chunk is not checkpointed: backward would rebuild the same [n, V] intermediates, so
    # the peak is the same and the recomputation is pure cost (most short-sequence batches).
    recompute = torch.is_grad_enabled() and n > chunk_size
    for start in range(0, n, chunk_size):
        chunk = {k: v[start : start + chunk_size] for k, v in per_token.items()}
        if recompute:
            out, metrics = checkpoint(fn, chunk, *params, use_reentrant=False)
        else:
            out, metrics = fn(chunk, *params)
        outs.append(out)
        for k, v in metrics.items():
            sums[k] = sums[k] + v if k in sums else v
    return [torch.cat(parts) for parts in zip(*outs)] if outs else None, sums


def _finish(g: _Gathered, student: StudentOutputs, values_N, token_logq_N, sums: dict) -> SupportResult:
    """Scatter the N per-token results back to ``[B, L]`` (zeros off-mask) and make floats."""
    mask = g.mask_B_L
    dtype = compute_dtype(student.hidden_B_L_H.dtype)
    # A zero that still depends on the student, so backward works (and DDP sees every parameter
    # used) even for a micro-batch without a single trained token.
    zero = (student.hidden_B_L_H.sum() + student.lm_head_V_H.sum()).to(dtype) * 0.0
    values_B_L = torch.zeros(mask.shape, dtype=dtype, device=mask.device) + zero
    token_B_L = torch.zeros(mask.shape, dtype=dtype, device=mask.device) + zero
    if values_N is not None:
        values_B_L = values_B_L.masked_scatter(mask, values_N.to(dtype))
        token_B_L = token_B_L.masked_scatter(mask, token_logq_N.to(dtype))
    metric_sums = {k: float(v) for k, v in sums.items()}
    return SupportResult(values_B_L=values_B_L, student_token_logprobs_B_L=token_B_L, mask_B_L=mask, metric_sums=metric_sums)


def _topk_pair(divergence, logq_C_V: Tensor, ids_C_K: Tensor, t_C_K1: Tensor, tokens_C: Tensor):
    """What both top-k supports share once the ids are chosen: the student over the same K + 1
    outcomes (its exact tail bucket), the divergence, the student's token log-probs, and the
    metrics that do not depend on who chose the ids."""
    s_C_K1 = _with_tail(logq_C_V.gather(-1, ids_C_K), complement_logsumexp(logq_C_V, ids_C_K))
    values_C = divergence(s_C_K1, t_C_K1)
    token_logq_C = _token_logp(logq_C_V, tokens_C)
    with torch.no_grad():
        m = _pair_metrics(s_C_K1, t_C_K1)
        m["student_entropy"] = entropy(logq_C_V).sum()
        m["tail_mass"] = t_C_K1[:, -1].float().exp().sum()
    return values_C, token_logq_C, m


def _sparse_teacher_tail(logp_N_K: Tensor) -> tuple[Tensor, Tensor]:
    """Teacher tail log-mass from sparse top-k log-probs: log1mexp(logsumexp), and #clamped."""
    tail_N, clamped_N = log1mexp(torch.logsumexp(_upcast(logp_N_K), dim=-1))
    return tail_N, clamped_N.sum().float()


def _metric_zeros(device) -> dict[str, Tensor]:
    return {"clamped": torch.zeros((), device=device)}


# ----------------------------------------------------------------------------- supports
@dataclass(frozen=True)
class Sampled:
    """``sampled``: the divergence is estimated at the token actually in the batch.

    ``fn`` is an estimator ``est(student_logq_N, teacher_logp_N)``; the teacher log-prob comes from
    ``scores.token_logprobs_B_L``. The student's token log-prob still needs its full softmax
    normalizer, computed chunk by chunk. Diagnostics: exact full-vocabulary KLs, entropies and
    top-k overlap with a dense teacher; otherwise ``reverse_kl`` is the k1 estimate
    sum (log q - log p) (unbiased only on student samples), ``teacher_entropy`` and
    ``topk_overlap`` come from the teacher's top-k + tail when present, and ``tail_mass`` is the
    teacher mass outside the sampled token, 1 - p(x).
    """

    uses_estimator: ClassVar[bool] = True

    def __call__(self, estimator, student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch,
                 mask_B_L: Tensor, *, top_k: int = 16, chunk_size: int = 1024) -> SupportResult:
        if not hasattr(estimator, "sampler"):
            raise TypeError(f"the sampled support needs an estimator (k1, k2, k3, nll), got {estimator!r}")
        g = _gather(student, scores, batch, mask_B_L)
        teacher_tok_N = scores.token_logprobs_B_L.to(g.mask_B_L.device)[g.mask_B_L].detach()
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N}
        sparse_topk = scores.topk_logprobs_B_L_K is not None and scores.topk_ids_B_L_K is not None
        if g.teacher_hidden_N_H is not None:
            per_token["h_t"] = g.teacher_hidden_N_H
        elif sparse_topk:
            per_token["t_ids"] = scores.topk_ids_B_L_K.to(g.mask_B_L.device)[g.mask_B_L]
        w_t = scores.lm_head_V_H.detach() if scores.is_dense else None

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = _logp(c["h_s"], w_s, g.temperature, g.vocab)
            token_logq_C = _token_logp(logq_C_V, c["tok"])
            with torch.no_grad():
                m = {"student_entropy": entropy(logq_C_V).sum()}
                k = min(top_k, g.vocab)
                if "h_t" in c:
                    logp_C_V = _logp(c["h_t"], w_t, g.temperature, g.vocab)
                    m.update(_pair_metrics(logq_C_V, logp_C_V))
                    m["teacher_entropy"] = entropy(logp_C_V).sum()
                    m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, logp_C_V.topk(k).indices).sum()
                elif "t_ids" in c:
                    m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, c["t_ids"]).sum()
            return (token_logq_C,), m

        outs, sums = _map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        token_logq_N = outs[0] if outs else None
        values_N = estimator(token_logq_N, teacher_tok_N) if outs else None
        with torch.no_grad():
            sums.update(_metric_zeros(g.mask_B_L.device))
            sums["tail_mass"] = (-torch.expm1(teacher_tok_N.float())).sum()
            if g.teacher_hidden_N_H is None and outs:
                sums["reverse_kl"] = (token_logq_N.detach().float() - teacher_tok_N.float()).sum()
                if sparse_topk:
                    t_lp_N_K = _upcast(scores.topk_logprobs_B_L_K.to(g.mask_B_L.device)[g.mask_B_L])
                    tail_N, clamped = _sparse_teacher_tail(t_lp_N_K)
                    sums["teacher_entropy"] = entropy(_with_tail(t_lp_N_K, tail_N)).sum()
        return _finish(g, student, values_N, token_logq_N, sums)


@dataclass(frozen=True)
class StudentTopK:
    """``student_topk``: the student's top-k ids at each position, plus a tail bucket.

    Teacher log-probs on those ids come from a dense teacher (exact tail by logsumexp over the
    other ids), or from a server via ``scores.chosen_ids_B_L_K`` and
    ``scores.chosen_logprobs_B_L_K`` (ids chosen at rollout time; all K columns are
    used; tail = log1mexp(logsumexp), clamps counted in ``clamped``). The student's tail is always
    the exact log-mass of its other ids, so both sides are proper distributions over K + 1
    outcomes. The top-k selection itself is not differentiated (ids are integers).
    """

    uses_estimator: ClassVar[bool] = False

    def __call__(self, divergence, student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch,
                 mask_B_L: Tensor, *, top_k: int = 16, chunk_size: int = 1024) -> SupportResult:
        g = _gather(student, scores, batch, mask_B_L)
        dev = g.mask_B_L.device
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N}
        sums_extra = _metric_zeros(dev)
        server_ids, server_lp = scores.chosen_ids_B_L_K, scores.chosen_logprobs_B_L_K
        if g.teacher_hidden_N_H is not None:
            per_token["h_t"] = g.teacher_hidden_N_H
        elif server_ids is not None and server_lp is not None:
            per_token["s_ids"] = server_ids.to(dev)[g.mask_B_L]
            per_token["t_lp"] = _upcast(server_lp.to(dev)[g.mask_B_L])
            per_token["t_tail"], sums_extra["clamped"] = _sparse_teacher_tail(per_token["t_lp"])
            if scores.topk_ids_B_L_K is not None:
                per_token["t_topk_ids"] = scores.topk_ids_B_L_K.to(dev)[g.mask_B_L]
        else:
            raise ValueError(
                "the student_topk support needs a dense teacher (hidden_B_L_H + lm_head_V_H) or "
                "scores.chosen_ids_B_L_K and chosen_logprobs_B_L_K from the scorer"
            )
        w_t = scores.lm_head_V_H.detach() if scores.is_dense else None
        k = min(top_k, g.vocab)

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = _logp(c["h_s"], w_s, g.temperature, g.vocab)
            if "h_t" in c:
                ids_C_K = logq_C_V.detach().topk(k).indices
                logp_C_V = _logp(c["h_t"], w_t, g.temperature, g.vocab)
                t_C_K1 = _with_tail(logp_C_V.gather(-1, ids_C_K), complement_logsumexp(logp_C_V, ids_C_K))
            else:
                ids_C_K = c["s_ids"]
                t_C_K1 = _with_tail(c["t_lp"], c["t_tail"])
            values_C, token_logq_C, m = _topk_pair(divergence, logq_C_V, ids_C_K, t_C_K1, c["tok"])
            with torch.no_grad():
                if "h_t" in c:
                    m["teacher_entropy"] = entropy(logp_C_V).sum()
                    m["topk_overlap"] = topk_overlap(ids_C_K, logp_C_V.topk(k).indices).sum()
                else:
                    m["teacher_entropy"] = entropy(t_C_K1).sum()
                    if "t_topk_ids" in c:
                        m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, c["t_topk_ids"]).sum()
            return (values_C, token_logq_C), m

        outs, sums = _map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(sums_extra)
        return _finish(g, student, *(outs or (None, None)), sums)


@dataclass(frozen=True)
class TeacherTopK:
    """``teacher_topk``: the teacher's top-k ids at each position, plus a tail bucket.

    Ids and log-probs come from ``scores.topk_ids_B_L_K``/``topk_logprobs_B_L_K`` (the ``top_k``
    largest when the scorer sent more), or from a dense teacher (exact tail). A sparse teacher's
    tail is ``scores.tail_logmass_B_L`` when it matches the ids used, else
    log1mexp(logsumexp(top-k)); a top-k mass that rounds to >= 1 gives tail -inf and is counted
    in ``clamped``. The student's log-probs are gathered on the same ids, its tail is the exact
    log-mass of the other ids: both sides are proper distributions over K + 1 outcomes, and with
    K = V this is the full support.
    """

    uses_estimator: ClassVar[bool] = False

    def __call__(self, divergence, student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch,
                 mask_B_L: Tensor, *, top_k: int = 16, chunk_size: int = 1024) -> SupportResult:
        g = _gather(student, scores, batch, mask_B_L)
        dev = g.mask_B_L.device
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N}
        sums_extra = _metric_zeros(dev)
        k = min(top_k, g.vocab)
        if g.teacher_hidden_N_H is not None:
            per_token["h_t"] = g.teacher_hidden_N_H
        elif scores.topk_ids_B_L_K is not None and scores.topk_logprobs_B_L_K is not None:
            ids_N_K = scores.topk_ids_B_L_K.to(dev)[g.mask_B_L]
            lp_N_K = _upcast(scores.topk_logprobs_B_L_K.to(dev)[g.mask_B_L])
            if ids_N_K.shape[-1] > top_k:  # the scorer sent more than asked: keep the largest
                lp_N_K, pos = lp_N_K.topk(top_k, dim=-1)
                ids_N_K = ids_N_K.gather(-1, pos)
                tail_N, sums_extra["clamped"] = _sparse_teacher_tail(lp_N_K)
            elif scores.tail_logmass_B_L is not None:
                tail_N = _upcast(scores.tail_logmass_B_L.to(dev)[g.mask_B_L])
            else:
                tail_N, sums_extra["clamped"] = _sparse_teacher_tail(lp_N_K)
            per_token.update(t_ids=ids_N_K, t_lp=lp_N_K, t_tail=tail_N)
        else:
            raise ValueError(
                "the teacher_topk support needs scores.topk_ids_B_L_K + topk_logprobs_B_L_K "
                "(set teacher.top_k > 0) or a dense teacher"
            )
        w_t = scores.lm_head_V_H.detach() if scores.is_dense else None

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = _logp(c["h_s"], w_s, g.temperature, g.vocab)
            if "h_t" in c:
                logp_C_V = _logp(c["h_t"], w_t, g.temperature, g.vocab)
                top = logp_C_V.topk(k)
                ids_C_K = top.indices
                t_C_K1 = _with_tail(top.values, complement_logsumexp(logp_C_V, ids_C_K))
            else:
                ids_C_K = c["t_ids"]
                t_C_K1 = _with_tail(c["t_lp"], c["t_tail"])
            values_C, token_logq_C, m = _topk_pair(divergence, logq_C_V, ids_C_K, t_C_K1, c["tok"])
            with torch.no_grad():
                m["teacher_entropy"] = entropy(logp_C_V if "h_t" in c else t_C_K1).sum()
                kk = min(k, ids_C_K.shape[-1])
                m["topk_overlap"] = topk_overlap(logq_C_V.topk(kk).indices, ids_C_K).sum()
            return (values_C, token_logq_C), m

        outs, sums = _map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(sums_extra)
        return _finish(g, student, *(outs or (None, None)), sums)


@dataclass(frozen=True)
class Full:
    """``full``: the divergence over the whole vocabulary, exact (dense teacher only).

    Never materializes ``[B, L, V]``: masked positions only, ``chunk_size`` tokens at a time,
    each chunk under checkpoint (see the module docstring). ``top_k`` only sets the width of the
    ``topk_overlap`` diagnostic.
    """

    uses_estimator: ClassVar[bool] = False

    def __call__(self, divergence, student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch,
                 mask_B_L: Tensor, *, top_k: int = 16, chunk_size: int = 1024) -> SupportResult:
        if not scores.is_dense:
            raise ValueError(
                "the full support needs a dense teacher (hidden_B_L_H + lm_head_V_H, i.e. a local "
                "scorer); with a remote teacher use teacher_topk or sampled"
            )
        g = _gather(student, scores, batch, mask_B_L)
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N, "h_t": g.teacher_hidden_N_H}
        w_t = scores.lm_head_V_H.detach()
        k = min(top_k, g.vocab)

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = _logp(c["h_s"], w_s, g.temperature, g.vocab)
            logp_C_V = _logp(c["h_t"], w_t, g.temperature, g.vocab)
            values_C = divergence(logq_C_V, logp_C_V)
            token_logq_C = _token_logp(logq_C_V, c["tok"])
            with torch.no_grad():
                m = _pair_metrics(logq_C_V, logp_C_V)
                m["student_entropy"] = entropy(logq_C_V).sum()
                m["teacher_entropy"] = entropy(logp_C_V).sum()
                m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, logp_C_V.topk(k).indices).sum()
            return (values_C, token_logq_C), m

        outs, sums = _map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(_metric_zeros(g.mask_B_L.device))
        sums["tail_mass"] = torch.zeros(())
        return _finish(g, student, *(outs or (None, None)), sums)
