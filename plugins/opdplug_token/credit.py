"""Credit schemes: per-token weights and advantages, ``scheme(batch, scores) -> Credit``.

Each scheme is a frozen dataclass whose fields are its options. Everything is computed under
``no_grad`` in float32 on the batch's device; weights and advantages are 0 off the loss mask.
The base advantage is the Tinker one, A_t = -(log q_sampler(x_t) - log p(x_t)): positive where
the teacher likes the sampled token more than the sampler did.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from opdplug.types import Credit, RolloutBatch, TeacherScores

__all__ = ["PerToken", "Discounted", "TokenImportance", "RewardPlusKL", "per_token_advantages", "discounted_cumsum"]

Tensor = torch.Tensor


def _mask(batch: RolloutBatch) -> Tensor:
    """The loss mask as float32 (the trained tokens)."""
    return batch.loss_mask_B_L.to(torch.float32)


@torch.no_grad()
def per_token_advantages(batch: RolloutBatch, scores: TeacherScores) -> Tensor:
    """A_t = -(sampling_logprob_t - teacher_logprob_t) on masked tokens, 0 elsewhere ``[B, L]``."""
    mask = _mask(batch)
    teacher = scores.token_logprobs_B_L.to(mask.device, torch.float32)
    sampler = batch.sampling_logprobs_B_L.to(mask.device, torch.float32)
    return torch.where(mask > 0, teacher - sampler, 0.0)


@torch.no_grad()
def discounted_cumsum(x_B_L: Tensor, mask_B_L: Tensor, gamma: float) -> Tensor:
    """Reversed discounted cumulative sum within each row, over masked tokens only.

    out_t = sum_{s >= t, s masked} gamma^(number of masked tokens strictly between t and s) x_s
    for masked t, 0 elsewhere. Unmasked positions (e.g. environment observations between turns)
    neither contribute nor count as a discount step. A loop over L, vectorized over rows.
    """
    mask = mask_B_L.bool()
    out = torch.zeros_like(x_B_L)
    running = torch.zeros_like(x_B_L[:, 0])
    for t in range(x_B_L.shape[1] - 1, -1, -1):
        running = torch.where(mask[:, t], x_B_L[:, t] + gamma * running, running)
        out[:, t] = torch.where(mask[:, t], running, 0.0)
    return out


def _metrics(adv_B_L: Tensor, w_B_L: Tensor, mask: Tensor) -> dict:
    """Token-summed diagnostics (the loop divides by the token count)."""
    return {"advantage": float((adv_B_L * mask).sum()), "credit_weight": float((w_B_L * mask).sum())}


@dataclass(frozen=True)
class PerToken:
    """``per_token``: weights = loss mask, advantages = -(log q_sampler - log p) per token."""

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask = _mask(batch)
        adv = per_token_advantages(batch, scores)
        return Credit(weights_B_L=mask, advantages_B_L=adv, metrics=_metrics(adv, mask, mask))


@dataclass(frozen=True)
class Discounted:
    """``discounted``: per-token advantages replaced by their reversed discounted cumulative sum.

    A_t = sum_{s >= t} gamma^(s - t) a_s within the row, counting only masked tokens
    (``discounted_cumsum``); gamma = 1 is the undiscounted reverse-KL-to-go, gamma = 0 the
    per-token scheme.
    """

    gamma: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"discounted gamma must be in [0, 1], got {self.gamma}")

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask = _mask(batch)
        adv = discounted_cumsum(per_token_advantages(batch, scores), mask, self.gamma)
        return Credit(weights_B_L=mask, advantages_B_L=adv, metrics=_metrics(adv, mask, mask))


@dataclass(frozen=True)
class TokenImportance:
    """``token_importance``: up-weight tokens where the teacher is sure and the student is not.

    c_t = teacher confidence = exp(max top-k log-prob) when the scores carry top-k, else the
        teacher's probability of the sampled token exp(token_logprob);
    u_t = student confusion = 1 - exp(sampling_logprob) (1 - probability the sampler gave x_t);
    raw_t = 1 + strength * c_t * u_t, and w_t = raw_t / mean_{masked}(raw), so the weights
    average 1 over the masked tokens (the loss scale does not change). strength = 0 gives the
    plain mask. Advantages are the per-token ones.
    """

    strength: float = 1.0

    def __post_init__(self):
        if self.strength < 0:
            raise ValueError(f"token_importance strength must be >= 0, got {self.strength}")

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask = _mask(batch)
        if scores.topk_logprobs_B_L_K is not None:
            confidence = scores.topk_logprobs_B_L_K.to(mask.device, torch.float32).max(-1).values.exp()
        else:
            confidence = scores.token_logprobs_B_L.to(mask.device, torch.float32).exp()
        confusion = -torch.expm1(batch.sampling_logprobs_B_L.to(mask.device, torch.float32))
        raw = (1.0 + self.strength * confidence * confusion) * mask
        mean = raw.sum() / mask.sum().clamp(min=1)
        w = torch.where(mask > 0, raw / mean.clamp(min=1e-12), 0.0)
        adv = per_token_advantages(batch, scores)
        return Credit(weights_B_L=w, advantages_B_L=adv, metrics=_metrics(adv, w, mask))


@dataclass(frozen=True)
class RewardPlusKL:
    """``reward_plus_kl``: per-token advantages plus a centered outcome reward.

    A_t = -(log q_sampler - log p)_t + reward_scale * (r_b - mean_b r_b) on every masked token of
    row b (mean over the micro-batch's rows). Needs ``batch.rewards_B`` (a verifier).
    ``reward_scale`` may exceed 1 (rewards in [0, 1] are small next to summed log-ratios).
    """

    reward_scale: float = 1.0

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        if batch.rewards_B is None:
            raise ValueError("credit scheme reward_plus_kl needs rewards: set credit.verifier")
        mask = _mask(batch)
        rewards = batch.rewards_B.to(mask.device, torch.float32)
        centered_B = rewards - rewards.mean()
        adv = per_token_advantages(batch, scores) + self.reward_scale * centered_B[:, None] * mask
        metrics = _metrics(adv, mask, mask)
        metrics["reward"] = float((rewards[:, None] * mask).sum())
        return Credit(weights_B_L=mask, advantages_B_L=adv, metrics=metrics)
