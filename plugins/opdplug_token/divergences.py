"""Token-level divergences between the student q and the teacher p.

Every divergence is a frozen dataclass whose fields are its options, called as

    div(student_logp_N_S, teacher_logp_N_S) -> value_N

on log-probs over a common support S (each row a proper distribution; any leading shape works,
the last dimension is reduced). q = student, p = teacher.

Numerics, decided once for all of them:

* the maths run in at least float32 (bf16/fp16 inputs are upcast, float64 stays float64); the
  value is returned in the input dtype;
* log-probs are floored at ``LOG_FLOOR`` (-1e4) with a straight-through gradient
  (``metrics.floor_logp``), so -inf entries (padding, disjoint supports) never produce NaN:
  - an entry where both sides are -inf contributes exactly 0 with zero gradient (0 log 0 = 0);
  - where one side has mass and the other none, the mathematically infinite KL terms become the
    large finite penalty ``mass * (log mass - LOG_FLOOR)`` (about 1e4 per unit of mass): values
    stay finite, gradients finite and pointing the right way. For forward KL, whose gradient
    w.r.t. the student logits is q - p even there, the gradient stays exact;
  - bounded divergences (JSD with 0 < beta < 1, TVD, skew KLs with alpha > 0, alpha-divergence
    with 0 < alpha < 1) keep their exact finite values on disjoint supports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .metrics import LOG_FLOOR, compute_dtype, entropy, floor_logp, kl

__all__ = [
    "AKL",
    "AlphaDivergence",
    "EntropyAware",
    "ForwardKL",
    "GeneralizedJSD",
    "ReverseKL",
    "SkewKL",
    "SkewReverseKL",
    "TVD",
    "ToDi",
    "LOG_FLOOR",
]


def _prepare(student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor):
    """Check shapes, upcast to the compute dtype, floor both sides. Returns (logq, logp, dtype)."""
    if student_logp_N_S.shape != teacher_logp_N_S.shape:
        raise ValueError(
            f"student and teacher log-probs must share a support: {tuple(student_logp_N_S.shape)} "
            f"vs {tuple(teacher_logp_N_S.shape)}"
        )
    dtype = compute_dtype(torch.promote_types(student_logp_N_S.dtype, teacher_logp_N_S.dtype))
    logq = floor_logp(student_logp_N_S.to(dtype))
    logp = floor_logp(teacher_logp_N_S.to(dtype))
    return logq, logp, student_logp_N_S.dtype


def _log_mix(logp_N_S: torch.Tensor, logq_N_S: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w p + (1 - w) q) computed in log space (logaddexp), for 0 < w < 1, floored inputs."""
    return torch.logaddexp(logp_N_S + math.log(weight_p), logq_N_S + math.log1p(-weight_p))


def _fkl(logq, logp):
    """KL(p || q) on floored log-probs."""
    return kl(logp, logq)


def _rkl(logq, logp):
    """KL(q || p) on floored log-probs."""
    return kl(logq, logp)


@dataclass(frozen=True)
class ForwardKL:
    """KL(p || q) = sum_i p_i (log p_i - log q_i): mass-covering (the SFT / GKD beta=0 objective).

    Where the teacher has mass and the student none, the value is the finite penalty
    ``p_i (log p_i - LOG_FLOOR)`` and the gradient w.r.t. the student logits is exactly q - p.
    """

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        return _fkl(logq, logp).to(dtype)


@dataclass(frozen=True)
class ReverseKL:
    """KL(q || p) = sum_i q_i (log q_i - log p_i): mode-seeking (the on-policy distillation default).

    Where the student has mass and the teacher none (teacher log-prob -inf), the teacher's
    log-prob is taken as ``LOG_FLOOR``: a large finite penalty, finite gradient pushing q_i down.
    """

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        return _rkl(logq, logp).to(dtype)


@dataclass(frozen=True)
class GeneralizedJSD:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024), as in TRL.

    M = beta p + (1 - beta) q (in log space), JSD = beta KL(p || M) + (1 - beta) KL(q || M).
    beta = 0 is *defined* as forward KL(p || q) and beta = 1 as reverse KL(q || p), exactly (the
    mixture formula itself tends to 0 at both ends; GKD/TRL switch to the KLs there).
    Bounded by the binary entropy of beta (log 2 at beta = 0.5) for 0 < beta < 1.
    """

    beta: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"jsd beta must be in [0, 1], got {self.beta}")

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        if self.beta == 0.0:
            return _fkl(logq, logp).to(dtype)
        if self.beta == 1.0:
            return _rkl(logq, logp).to(dtype)
        logm = _log_mix(logp, logq, self.beta)
        value = self.beta * kl(logp, logm) + (1.0 - self.beta) * kl(logq, logm)
        return value.to(dtype)


@dataclass(frozen=True)
class TVD:
    """Total variation distance 0.5 sum_i |p_i - q_i| (DistillSpec: 1 - TVD is the acceptance rate)."""

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        return (0.5 * (logp.exp() - logq.exp()).abs().sum(-1)).to(dtype)


@dataclass(frozen=True)
class SkewKL:
    """Skew KL of DistiLLM (Ko et al. 2024): KL(p || alpha p + (1 - alpha) q).

    alpha = 0 is forward KL; alpha > 0 keeps it bounded (by -log alpha) where q has no mass.
    """

    alpha: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"skew_kl alpha must be in [0, 1], got {self.alpha}")

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        if self.alpha == 0.0:
            logm = logq
        elif self.alpha == 1.0:
            logm = logp
        else:
            logm = _log_mix(logp, logq, self.alpha)
        return kl(logp, logm).to(dtype)


@dataclass(frozen=True)
class SkewReverseKL:
    """Skew reverse KL of DistiLLM: KL(q || (1 - alpha) p + alpha q).

    alpha = 0 is reverse KL; alpha > 0 keeps it bounded (by -log alpha) where p has no mass.
    """

    alpha: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"skew_reverse_kl alpha must be in [0, 1], got {self.alpha}")

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        if self.alpha == 0.0:
            logm = logp
        elif self.alpha == 1.0:
            logm = logq
        else:
            logm = _log_mix(logp, logq, 1.0 - self.alpha)
        return kl(logq, logm).to(dtype)


@dataclass(frozen=True)
class AlphaDivergence:
    """Amari alpha-divergence D_alpha(p || q) = (1 - sum_i p_i^alpha q_i^(1-alpha)) / (alpha (1 - alpha)).

    Limits: alpha -> 1 gives forward KL(p || q); alpha -> 0 gives reverse KL(q || p); alpha = 0.5
    is 4 (1 - sum_i sqrt(p_i q_i)), four times the squared Hellinger distance.
    alpha must lie in [0, 1] (outside it the divergence is infinite wherever the supports differ);
    the endpoints are evaluated as the KLs exactly.

    For stability the numerator is summed as non-negative terms
    ``alpha p_i + (1 - alpha) q_i - p_i^alpha q_i^(1-alpha)`` (weighted AM-GM), which avoids the
    ``1 - (something close to 1)`` cancellation; ``p^alpha q^(1-alpha)`` is computed as
    ``exp(alpha log p + (1 - alpha) log q) <= 1`` and set to exactly 0 where either side is 0.
    """

    alpha: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha-divergence alpha must be in [0, 1], got {self.alpha}")

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        a = self.alpha
        if a == 1.0:
            return _fkl(logq, logp).to(dtype)
        if a == 0.0:
            return _rkl(logq, logp).to(dtype)
        both = (logp > LOG_FLOOR) & (logq > LOG_FLOOR)
        geo = torch.where(both, torch.exp(a * logp + (1.0 - a) * logq), torch.zeros_like(logp))
        terms = a * logp.exp() + (1.0 - a) * logq.exp() - geo
        return (terms.sum(-1) / (a * (1.0 - a))).to(dtype)


@dataclass(frozen=True)
class AKL:
    """Adaptive KL (Wu et al. 2024): mix forward and reverse KL by where the gap lies.

    Head = the teacher's top tokens, taken in decreasing p until their cumulative mass reaches
    ``mu`` (the token crossing mu included); tail = the rest. With g_head = sum_head |p - q| and
    g_tail = sum_tail |p - q|:

        value = g_head / (g_head + g_tail) * FKL + g_tail / (g_head + g_tail) * RKL

    (FKL fits the head, RKL the tail). The mixing weights are detached; when p == q both gaps
    are 0 and the weights are 1/2 each (both KLs are 0 there anyway).
    """

    mu: float = 0.5

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        with torch.no_grad():
            p, q = logp.exp(), logq.exp()
            p_sorted, order = p.sort(dim=-1, descending=True)
            mass_before = p_sorted.cumsum(-1) - p_sorted
            head = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, mass_before < self.mu)
            gap = (p - q).abs()
            g_head = (gap * head).sum(-1)
            g_tail = (gap * ~head).sum(-1)
            total = g_head + g_tail
            w_head = torch.where(total > 0, g_head / total.clamp(min=torch.finfo(total.dtype).tiny), 0.5)
        return (w_head * _fkl(logq, logp) + (1.0 - w_head) * _rkl(logq, logp)).to(dtype)


@dataclass(frozen=True)
class ToDi:
    """Token-wise Distillation (ToDi): route each vocabulary entry between FKL and RKL terms.

    a_i = sigmoid(beta (log p_i - log q_i)) (detached): where the student under-estimates the
    teacher (p_i > q_i) the forward term dominates and pulls q_i up; where it over-estimates, the
    reverse term pushes q_i down.

        value = sum_i a_i p_i (log p_i - log q_i) + (1 - a_i) q_i (log q_i - log p_i)
    """

    beta: float = 1.0

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        log_ratio = logp - logq
        a = torch.sigmoid(self.beta * log_ratio).detach()
        value = (a * logp.exp() * log_ratio - (1.0 - a) * logq.exp() * log_ratio).sum(-1)
        return value.to(dtype)


@dataclass(frozen=True)
class EntropyAware:
    """Entropy-aware interpolation of forward and reverse KL per token.

    h = H(p) / log|S_valid| in [0, 1] (detached), the teacher's normalized entropy, where
    S_valid are the support entries not -inf on both sides (padding excluded; h = 0 when fewer
    than two remain). value = (1 - h) RKL + h FKL: a confident teacher (h -> 0) gives the
    mode-seeking reverse KL, an uncertain one (h -> 1) the mass-covering forward KL.
    """

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        logq, logp, dtype = _prepare(student_logp_N_S, teacher_logp_N_S)
        with torch.no_grad():
            n_valid = ((logp > LOG_FLOOR) | (logq > LOG_FLOOR)).sum(-1).to(logp.dtype)
            h = entropy(logp) / n_valid.clamp(min=2).log()
            h = torch.where(n_valid >= 2, h.clamp(0.0, 1.0), torch.zeros_like(h))
        return ((1.0 - h) * _rkl(logq, logp) + h * _fkl(logq, logp)).to(dtype)
