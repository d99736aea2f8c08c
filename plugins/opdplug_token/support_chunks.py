"""What every support of ``opdplug_token.supports`` runs on: the trained positions gathered to N
tokens, log-probs computed ``chunk_size`` tokens at a time (under ``torch.utils.checkpoint`` when
there is more than one chunk, so backward recomputes one chunk's ``[chunk, V]`` logits at a time),
the results scattered back to ``[B, L]``, and the diagnostics the supports share.

``SupportResult`` (what a support hands to an update rule) is defined here and exported by
``opdplug_token.supports``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from opdplug.types import RolloutBatch, StudentOutputs, TeacherScores

from .metrics import complement_logsumexp, compute_dtype, entropy, floor_logp, log1mexp

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


@dataclass(frozen=True)
class Gathered:
    """The masked positions of one micro-batch, flattened to N tokens."""

    mask_B_L: Tensor
    tokens_N: Tensor
    student_hidden_N_H: Tensor
    teacher_hidden_N_H: Optional[Tensor]
    vocab: int
    """Common vocabulary size (the larger lm_head; the smaller side is padded with -inf)."""
    temperature: float


def gather_masked(student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch, mask_B_L: Tensor) -> Gathered:
    """Check the temperature, select the masked positions, detach the teacher."""
    if not math.isclose(float(scores.temperature), float(student.temperature), rel_tol=1e-6, abs_tol=1e-9):
        raise ValueError(
            f"teacher scores were computed at temperature {scores.temperature} but the loss runs at "
            f"{student.temperature}: one temperature must be used for sampling, scoring and the loss"
        )
    device = student.hidden_B_L_H.device
    mask = mask_B_L.to(device).bool()
    if scores.scored_B_L is not None:  # tokens the teacher could not score stay out of the loss
        mask = mask & scores.scored_B_L.to(device).bool()
    vocab = student.lm_head_V_H.shape[0]
    teacher_hidden = None
    if scores.is_dense and scores.vocab_map_2_M is None:
        teacher_hidden = scores.hidden_B_L_H.to(device)[mask].detach()
        vocab = max(vocab, scores.lm_head_V_H.shape[0])
    return Gathered(
        mask_B_L=mask,
        tokens_N=batch.input_ids_B_L.to(device)[mask],
        student_hidden_N_H=student.hidden_B_L_H[mask],
        teacher_hidden_N_H=teacher_hidden,
        vocab=vocab,
        temperature=float(student.temperature),
    )


def require_shared_vocab(scores: TeacherScores, support: str) -> None:
    """One line when a teacher with another vocabulary meets a support that compares ids."""
    if scores.vocab_map_2_M is not None:
        raise ValueError(
            f"the {support} support compares the two models id by id, but this teacher has another "
            f"vocabulary: use sampled, xtok_topk or xtok_full (see docs/cross_tokenizer.md)"
        )


def chunk_logp(hidden_C_H: Tensor, lm_head_V_H: Tensor, temperature: float, vocab: int) -> Tensor:
    """log softmax(hidden @ W.T / temperature) ``[C, vocab]`` in at least float32.

    The matmul runs in the model dtype (as the forward pass would); the softmax is upcast. A
    smaller vocabulary is padded with -inf columns (tokens that side can never emit).
    """
    logits_C_V = (hidden_C_H @ lm_head_V_H.T).to(compute_dtype(hidden_C_H.dtype)) / temperature
    if logits_C_V.shape[-1] < vocab:
        logits_C_V = F.pad(logits_C_V, (0, vocab - logits_C_V.shape[-1]), value=float("-inf"))
    return torch.log_softmax(logits_C_V, dim=-1)


def upcast(x: Tensor) -> Tensor:
    """Sparse teacher numbers in the compute dtype (at least float32, float64 kept)."""
    return x.to(compute_dtype(x.dtype))


def token_logp(logp_C_V: Tensor, tokens_C: Tensor) -> Tensor:
    """The log-prob of each position's own token ``[C]``."""
    return logp_C_V.gather(-1, tokens_C[:, None]).squeeze(-1)


def with_tail(logp_C_K: Tensor, tail_C: Tensor) -> Tensor:
    """Append the tail bucket: a distribution over K + 1 outcomes ``[C, K + 1]``."""
    return torch.cat([logp_C_K, tail_C[:, None].to(logp_C_K.dtype)], dim=-1)


def pair_metrics(logq_C_S: Tensor, logp_C_S: Tensor, *, entropies: bool = False) -> dict[str, Tensor]:
    """Token-summed reverse and forward KL between two distributions on the same support, and with
    ``entropies`` both entropies (student_entropy, teacher_entropy): no gradient.

    Why one function: on a full vocabulary each is a pass over ``[C, V]``; together they share the
    floors, the exponentials and the difference, and each sum is one dot product (no product
    tensor). That is ``metrics.kl`` and ``metrics.entropy`` term for term."""
    dtype = compute_dtype(logq_C_S.dtype)
    with torch.no_grad():
        lq, lp = floor_logp(logq_C_S.to(dtype)).reshape(-1), floor_logp(logp_C_S.to(dtype)).reshape(-1)
        q, p, d = lq.exp(), lp.exp(), lq - lp
        out = {"reverse_kl": torch.dot(q, d), "forward_kl": -torch.dot(p, d)}
        if entropies:
            out.update(student_entropy=-torch.dot(q, lq), teacher_entropy=-torch.dot(p, lp))
    return out


def map_chunks(fn: Callable, per_token: dict[str, Tensor], params: tuple, chunk_size: int):
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


def finish(g: Gathered, student: StudentOutputs, values_N, token_logq_N, sums: dict) -> SupportResult:
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


def topk_pair(divergence, logq_C_V: Tensor, ids_C_K: Tensor, t_C_K1: Tensor, tokens_C: Tensor):
    """What both top-k supports share once the ids are chosen: the student over the same K + 1
    outcomes (its exact tail bucket), the divergence, the student's token log-probs, and the
    metrics that do not depend on who chose the ids."""
    s_C_K1 = with_tail(logq_C_V.gather(-1, ids_C_K), complement_logsumexp(logq_C_V, ids_C_K))
    values_C = divergence(s_C_K1, t_C_K1)
    token_logq_C = token_logp(logq_C_V, tokens_C)
    with torch.no_grad():
        m = pair_metrics(s_C_K1, t_C_K1)
        m["student_entropy"] = entropy(logq_C_V).sum()
        m["tail_mass"] = t_C_K1[:, -1].float().exp().sum()
    return values_C, token_logq_C, m


def sparse_teacher_tail(logp_N_K: Tensor) -> tuple[Tensor, Tensor]:
    """Teacher tail log-mass from sparse top-k log-probs: log1mexp(logsumexp), and #clamped."""
    tail_N, clamped_N = log1mexp(torch.logsumexp(upcast(logp_N_K), dim=-1))
    return tail_N, clamped_N.sum().float()


def metric_zeros(device) -> dict[str, Tensor]:
    return {"clamped": torch.zeros((), device=device)}


def per_group(estimator, token_logq_N: Tensor, teacher_logp_N: Tensor, groups_N: Tensor) -> Tensor:
    """An estimator taken per group of positions the teacher scored together.

    Each group's student and teacher log-probs are summed (the chain rule over the group), the
    estimator runs on the sums, and the value lands on the group's last position (0 on the
    others), so summing values over tokens sums them over groups. Groups of one position give
    exactly the per-token estimator. ``groups_N`` must be contiguous (ids in token order).
    """
    _, inverse_N, counts_G = torch.unique_consecutive(groups_N, return_inverse=True, return_counts=True)
    if bool((counts_G == 1).all()):
        return estimator(token_logq_N, teacher_logp_N)
    G = counts_G.shape[0]
    logq_G = torch.zeros(G, dtype=token_logq_N.dtype, device=token_logq_N.device).index_add(0, inverse_N, token_logq_N)
    logp_G = torch.zeros(G, dtype=teacher_logp_N.dtype, device=teacher_logp_N.device).index_add(0, inverse_N, teacher_logp_N)
    values_G = estimator(logq_G, logp_G)
    last_G = counts_G.cumsum(0) - 1
    return torch.zeros_like(token_logq_N, dtype=values_G.dtype).index_put((last_G,), values_G)

