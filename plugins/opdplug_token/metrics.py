"""Small numerical helpers shared by divergences, supports and credit schemes.

Conventions: ``logp_N_S`` is a row-normalized log-distribution over a support of size S
(entries may be -inf); every helper reduces over the last dimension and accepts any leading
shape. Nothing here allocates more than its inputs.
"""
from __future__ import annotations

import torch

LOG_FLOOR = -1.0e4
"""Log-probabilities below this are treated as exactly this value (exp(-1e4) == 0 in float32 and
float64). It turns -inf (padding, disjoint supports) into a finite number, so that no
``-inf - (-inf)`` or ``0 * inf`` is ever formed and every divergence stays finite and NaN-free."""


class _FloorST(torch.autograd.Function):
    """clamp(x, min=floor) in the forward pass, identity in the backward pass.

    Why straight-through: a plain clamp would zero the gradient of an entry at -inf, which
    changes the gradient of the *other* logits through the softmax normalizer (e.g. the exact
    forward-KL gradient w.r.t. the logits is q - p, including where q == 0). The identity keeps
    the gradient of the infinite-support formula exact and finite.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, floor: float) -> torch.Tensor:  # noqa: D102
        return x.clamp(min=floor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None


def floor_logp(logp: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """Log-probs clamped below at ``floor`` with a straight-through gradient (see ``_FloorST``)."""
    return _FloorST.apply(logp, floor)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the maths run in: at least float32 (bf16/fp16 are upcast), float64 kept."""
    return torch.promote_types(dtype, torch.float32)


def entropy(logp_N_S: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``-sum p log p`` per row ``[N]`` with 0 log 0 = 0 (floored logs)."""
    lp = floor_logp(logp_N_S.to(compute_dtype(logp_N_S.dtype)))
    return -(lp.exp() * lp).sum(-1)


def kl(logp_N_S: torch.Tensor, logq_N_S: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum p (log p - log q) per row ``[N]``, on already-floored log-probs.

    With floored inputs every term is finite: where p == 0 the term is exactly 0 (0 log 0),
    where p > 0 and q == 0 it is a large finite penalty ``p (log p - LOG_FLOOR)``.
    """
    return (logp_N_S.exp() * (logp_N_S - logq_N_S)).sum(-1)


def log1mexp(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log(1 - exp(x)), clamped)``: the stable log1mexp and a bool mask of where it clamped.

    Two branches (Maechler 2012): ``log(-expm1(x))`` near 0, ``log1p(-exp(x))`` far from it.
    x >= 0 (top-k mass summing to >= 1 after rounding) is mathematically impossible; those
    entries give -inf (no tail mass) and are reported in ``clamped`` so a caller can count them.
    """
    clamped = x >= 0
    x_safe = torch.where(clamped, torch.full_like(x, -1.0), x)  # keep both branches NaN-free
    out = torch.where(x_safe > -0.6931471805599453, torch.log(-torch.expm1(x_safe)), torch.log1p(-torch.exp(x_safe)))
    return torch.where(clamped, torch.full_like(out, float("-inf")), out), clamped


def complement_logsumexp(logp_N_V: torch.Tensor, ids_N_K: torch.Tensor) -> torch.Tensor:
    """log of the mass outside ``ids_N_K``: ``logsumexp`` over the other V - K entries ``[N]``.

    Exact (no ``1 - sum`` cancellation) and differentiable. The excluded entries are set to a
    huge finite negative number instead of -inf so that a row with nothing left (K == V, or only
    padding outside the ids) gives a huge negative value with finite gradients, never NaN.
    """
    very_negative = torch.finfo(logp_N_V.dtype).min / 4
    return torch.logsumexp(logp_N_V.scatter(-1, ids_N_K, very_negative), dim=-1)


def topk_overlap(ids_a_N_K: torch.Tensor, ids_b_N_K: torch.Tensor) -> torch.Tensor:
    """|a ∩ b| / k per row ``[N]`` for two id sets (k = the smaller width)."""
    k = min(ids_a_N_K.shape[-1], ids_b_N_K.shape[-1])
    a, b = ids_a_N_K[..., :k], ids_b_N_K[..., :k]
    return (a[..., :, None] == b[..., None, :]).any(-1).sum(-1).to(torch.float32) / max(k, 1)


def masked_mean(x_B_L: torch.Tensor, mask_B_L: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (0 when there are none)."""
    m = mask_B_L.to(x_B_L.dtype)
    return (x_B_L * m).sum() / m.sum().clamp(min=1)
