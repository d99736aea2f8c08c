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

from dataclasses import dataclass
from typing import ClassVar

import torch

from opdplug.types import RolloutBatch, StudentOutputs, TeacherScores

from .metrics import complement_logsumexp, entropy, topk_overlap
from .support_chunks import (
    SupportResult, chunk_logp, finish, gather_masked, map_chunks, metric_zeros, pair_metrics, per_group,
    require_shared_vocab, sparse_teacher_tail, token_logp, topk_pair, upcast, with_tail,
)

__all__ = ["SupportResult", "Sampled", "StudentTopK", "TeacherTopK", "Full"]

Tensor = torch.Tensor


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
    any_vocabulary: ClassVar[bool] = True  # the sampled token's log-prob is all it reads

    def __call__(self, estimator, student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch,
                 mask_B_L: Tensor, *, top_k: int = 16, chunk_size: int = 1024) -> SupportResult:
        if not hasattr(estimator, "sampler"):
            raise TypeError(f"the sampled support needs an estimator (k1, k2, k3, nll), got {estimator!r}")
        g = gather_masked(student, scores, batch, mask_B_L)
        teacher_tok_N = scores.token_logprobs_B_L.to(g.mask_B_L.device)[g.mask_B_L].detach()
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N}
        sparse_topk = (scores.topk_logprobs_B_L_K is not None and scores.topk_ids_B_L_K is not None
                       and scores.vocab_map_2_M is None)
        if g.teacher_hidden_N_H is not None:
            per_token["h_t"] = g.teacher_hidden_N_H
        elif sparse_topk:
            per_token["t_ids"] = scores.topk_ids_B_L_K.to(g.mask_B_L.device)[g.mask_B_L]
        w_t = scores.lm_head_V_H.detach() if scores.is_dense else None

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = chunk_logp(c["h_s"], w_s, g.temperature, g.vocab)
            token_logq_C = token_logp(logq_C_V, c["tok"])
            with torch.no_grad():
                k = min(top_k, g.vocab)
                if "h_t" in c:
                    logp_C_V = chunk_logp(c["h_t"], w_t, g.temperature, g.vocab)
                    m = pair_metrics(logq_C_V, logp_C_V, entropies=True)
                    m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, logp_C_V.topk(k).indices).sum()
                else:
                    m = {"student_entropy": entropy(logq_C_V).sum()}
                    if "t_ids" in c:
                        m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, c["t_ids"]).sum()
            return (token_logq_C,), m

        outs, sums = map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        token_logq_N = outs[0] if outs else None
        values_N = None
        if outs and scores.token_groups_B_L is not None:  # another tokenizer: one value per group
            groups_N = scores.token_groups_B_L.to(g.mask_B_L.device)[g.mask_B_L]
            values_N = per_group(estimator, token_logq_N, teacher_tok_N, groups_N)
        elif outs:
            values_N = estimator(token_logq_N, teacher_tok_N)
        with torch.no_grad():
            sums.update(metric_zeros(g.mask_B_L.device))
            sums["tail_mass"] = (-torch.expm1(teacher_tok_N.float())).sum()
            if g.teacher_hidden_N_H is None and outs:
                sums["reverse_kl"] = (token_logq_N.detach().float() - teacher_tok_N.float()).sum()
                if sparse_topk:
                    t_lp_N_K = upcast(scores.topk_logprobs_B_L_K.to(g.mask_B_L.device)[g.mask_B_L])
                    tail_N, clamped = sparse_teacher_tail(t_lp_N_K)
                    sums["teacher_entropy"] = entropy(with_tail(t_lp_N_K, tail_N)).sum()
        return finish(g, student, values_N, token_logq_N, sums)


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
        require_shared_vocab(scores, "student_topk")
        g = gather_masked(student, scores, batch, mask_B_L)
        dev = g.mask_B_L.device
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N}
        sums_extra = metric_zeros(dev)
        server_ids, server_lp = scores.chosen_ids_B_L_K, scores.chosen_logprobs_B_L_K
        if g.teacher_hidden_N_H is not None:
            per_token["h_t"] = g.teacher_hidden_N_H
        elif server_ids is not None and server_lp is not None:
            per_token["s_ids"] = server_ids.to(dev)[g.mask_B_L]
            per_token["t_lp"] = upcast(server_lp.to(dev)[g.mask_B_L])
            per_token["t_tail"], sums_extra["clamped"] = sparse_teacher_tail(per_token["t_lp"])
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
            logq_C_V = chunk_logp(c["h_s"], w_s, g.temperature, g.vocab)
            if "h_t" in c:
                ids_C_K = logq_C_V.detach().topk(k).indices
                logp_C_V = chunk_logp(c["h_t"], w_t, g.temperature, g.vocab)
                t_C_K1 = with_tail(logp_C_V.gather(-1, ids_C_K), complement_logsumexp(logp_C_V, ids_C_K))
            else:
                ids_C_K = c["s_ids"]
                t_C_K1 = with_tail(c["t_lp"], c["t_tail"])
            values_C, token_logq_C, m = topk_pair(divergence, logq_C_V, ids_C_K, t_C_K1, c["tok"])
            with torch.no_grad():
                if "h_t" in c:
                    m["teacher_entropy"] = entropy(logp_C_V).sum()
                    m["topk_overlap"] = topk_overlap(ids_C_K, logp_C_V.topk(k).indices).sum()
                else:
                    m["teacher_entropy"] = entropy(t_C_K1).sum()
                    if "t_topk_ids" in c:
                        m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, c["t_topk_ids"]).sum()
            return (values_C, token_logq_C), m

        outs, sums = map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(sums_extra)
        return finish(g, student, *(outs or (None, None)), sums)


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
        require_shared_vocab(scores, "teacher_topk")
        g = gather_masked(student, scores, batch, mask_B_L)
        dev = g.mask_B_L.device
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N}
        sums_extra = metric_zeros(dev)
        k = min(top_k, g.vocab)
        if g.teacher_hidden_N_H is not None:
            per_token["h_t"] = g.teacher_hidden_N_H
        elif scores.topk_ids_B_L_K is not None and scores.topk_logprobs_B_L_K is not None:
            ids_N_K = scores.topk_ids_B_L_K.to(dev)[g.mask_B_L]
            lp_N_K = upcast(scores.topk_logprobs_B_L_K.to(dev)[g.mask_B_L])
            if ids_N_K.shape[-1] > top_k:  # the scorer sent more than asked: keep the largest
                lp_N_K, pos = lp_N_K.topk(top_k, dim=-1)
                ids_N_K = ids_N_K.gather(-1, pos)
                tail_N, sums_extra["clamped"] = sparse_teacher_tail(lp_N_K)
            elif scores.tail_logmass_B_L is not None:
                tail_N = upcast(scores.tail_logmass_B_L.to(dev)[g.mask_B_L])
            else:
                tail_N, sums_extra["clamped"] = sparse_teacher_tail(lp_N_K)
            per_token.update(t_ids=ids_N_K, t_lp=lp_N_K, t_tail=tail_N)
        else:
            raise ValueError(
                "the teacher_topk support needs scores.topk_ids_B_L_K + topk_logprobs_B_L_K "
                "(set teacher.top_k > 0) or a dense teacher"
            )
        w_t = scores.lm_head_V_H.detach() if scores.is_dense else None

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = chunk_logp(c["h_s"], w_s, g.temperature, g.vocab)
            if "h_t" in c:
                logp_C_V = chunk_logp(c["h_t"], w_t, g.temperature, g.vocab)
                top = logp_C_V.topk(k)
                ids_C_K = top.indices
                t_C_K1 = with_tail(top.values, complement_logsumexp(logp_C_V, ids_C_K))
            else:
                ids_C_K = c["t_ids"]
                t_C_K1 = with_tail(c["t_lp"], c["t_tail"])
            values_C, token_logq_C, m = topk_pair(divergence, logq_C_V, ids_C_K, t_C_K1, c["tok"])
            with torch.no_grad():
                m["teacher_entropy"] = entropy(logp_C_V if "h_t" in c else t_C_K1).sum()
                kk = min(k, ids_C_K.shape[-1])
                m["topk_overlap"] = topk_overlap(logq_C_V.topk(kk).indices, ids_C_K).sum()
            return (values_C, token_logq_C), m

        outs, sums = map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(sums_extra)
        return finish(g, student, *(outs or (None, None)), sums)


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
        require_shared_vocab(scores, "full")
        if not scores.is_dense:
            raise ValueError(
                "the full support needs a dense teacher (hidden_B_L_H + lm_head_V_H, i.e. a local "
                "scorer); with a remote teacher use teacher_topk or sampled"
            )
        g = gather_masked(student, scores, batch, mask_B_L)
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N, "h_t": g.teacher_hidden_N_H}
        w_t = scores.lm_head_V_H.detach()
        k = min(top_k, g.vocab)

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = chunk_logp(c["h_s"], w_s, g.temperature, g.vocab)
            logp_C_V = chunk_logp(c["h_t"], w_t, g.temperature, g.vocab)
            values_C = divergence(logq_C_V, logp_C_V)
            token_logq_C = token_logp(logq_C_V, c["tok"])
            with torch.no_grad():
                m = pair_metrics(logq_C_V, logp_C_V, entropies=True)
                m["topk_overlap"] = topk_overlap(logq_C_V.topk(k).indices, logp_C_V.topk(k).indices).sum()
            return (values_C, token_logq_C), m

        outs, sums = map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(metric_zeros(g.mask_B_L.device))
        sums["tail_mass"] = torch.zeros(())
        return finish(g, student, *(outs or (None, None)), sums)
