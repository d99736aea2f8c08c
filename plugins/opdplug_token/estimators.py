"""Single-sample estimators evaluated at the sampled token x, for the ``sampled`` support.

Each is a frozen dataclass (no options) called as ``est(student_logq_N, teacher_logp_N) -> value_N``
with two class attributes:

* ``claims``: the divergence whose gradient the *backpropagated* value matches in expectation
  over the sampler, i.e. E_{x ~ sampler}[grad est(x)] = grad D (None: matches nothing);
* ``sampler``: who must have sampled x, ``"student"`` or ``"teacher"``.

The value and the gradient can estimate different things. Under student samples, with
r = p(x) / q(x) and grad log q(x) = s(x) (E_q[s] = 0):

* k1 = log q - log p: E_q[k1] = KL(q || p), but grad k1 = s, expectation 0. Use it only as a
  detached advantage (the Tinker recipe), never backpropagate it.
* k2 = (log q - log p)^2 / 2: grad = (log q - log p) s, E_q = grad KL(q || p). Reverse KL.
* k3 = (r - 1) - log r: E_q[k3] = KL(q || p) (unbiased, non-negative), but
  grad k3 = (1 - r) s and E_q[(1 - r) s] = -sum_x p(x) s(x) = grad KL(p || q): backpropagating
  k3 optimizes the FORWARD KL. This is the trap DESIGN.md warns about.
* nll = -log q under teacher samples: E_p[-s] = grad KL(p || q), i.e. SFT on teacher text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .metrics import compute_dtype

__all__ = ["K1", "K2", "K3", "NLL"]


def _log_ratio(student_logq_N: torch.Tensor, teacher_logp_N: torch.Tensor) -> torch.Tensor:
    """log q - log p in the compute dtype (at least float32)."""
    dtype = compute_dtype(torch.promote_types(student_logq_N.dtype, teacher_logp_N.dtype))
    return student_logq_N.to(dtype) - teacher_logp_N.to(dtype)


@dataclass(frozen=True)
class K1:
    """k1 = log q(x) - log p(x): unbiased reverse-KL *value*; its pathwise gradient has mean 0."""

    claims: ClassVar[Optional[str]] = None
    sampler: ClassVar[str] = "student"

    def __call__(self, student_logq_N: torch.Tensor, teacher_logp_N: torch.Tensor) -> torch.Tensor:
        return _log_ratio(student_logq_N, teacher_logp_N).to(student_logq_N.dtype)


@dataclass(frozen=True)
class K2:
    """k2 = (log q(x) - log p(x))^2 / 2: its gradient is the reverse-KL gradient under student samples."""

    claims: ClassVar[Optional[str]] = "reverse_kl"
    sampler: ClassVar[str] = "student"

    def __call__(self, student_logq_N: torch.Tensor, teacher_logp_N: torch.Tensor) -> torch.Tensor:
        return (0.5 * _log_ratio(student_logq_N, teacher_logp_N).square()).to(student_logq_N.dtype)


@dataclass(frozen=True)
class K3:
    """k3 = (r - 1) - log r, r = p(x)/q(x): unbiased reverse-KL value, FORWARD-KL gradient.

    Computed as ``expm1(-d) + d`` with d = log q - log p, which is exact for small d (no
    ``(1 + tiny) - 1`` cancellation). r = exp(-d) can overflow where the student gives the
    sampled token far less mass than the teacher; the value is then +inf (not NaN).
    """

    claims: ClassVar[Optional[str]] = "forward_kl"
    sampler: ClassVar[str] = "student"

    def __call__(self, student_logq_N: torch.Tensor, teacher_logp_N: torch.Tensor) -> torch.Tensor:
        d = _log_ratio(student_logq_N, teacher_logp_N)
        return (torch.expm1(-d) + d).to(student_logq_N.dtype)


@dataclass(frozen=True)
class NLL:
    """nll = -log q(x) on teacher samples: supervised fine-tuning, the forward-KL gradient."""

    claims: ClassVar[Optional[str]] = "forward_kl"
    sampler: ClassVar[str] = "teacher"

    def __call__(self, student_logq_N: torch.Tensor, teacher_logp_N: torch.Tensor) -> torch.Tensor:
        return -student_logq_N.to(compute_dtype(student_logq_N.dtype)).to(student_logq_N.dtype)
