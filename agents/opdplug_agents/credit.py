"""Credit across turns: ``turn_level`` and ``discounted_episode`` (``[credit] scheme``).

Written like ``opdplug_token.credit``: frozen dataclasses whose fields are the options, called
``scheme(batch, scores) -> Credit`` under ``no_grad``; weights and advantages are 0 off the loss
mask. Per-token credit within turns is the core ``per_token`` scheme, which works on agent
batches as they are (observation tokens carry no loss, so they get neither weight nor advantage).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from opdplug.types import Credit, RolloutBatch, TeacherScores

__all__ = ["TurnLevel", "DiscountedEpisode", "turns_remaining"]

Tensor = torch.Tensor


def _mask(batch: RolloutBatch) -> Tensor:
    return batch.loss_mask_B_L.to(torch.float32)


@torch.no_grad()
def _teacher_advantages(batch: RolloutBatch, scores: TeacherScores, mask: Tensor) -> Tensor:
    """A_t = teacher log-prob - sampling log-prob on masked tokens (the per-token scheme's)."""
    teacher = scores.token_logprobs_B_L.to(mask.device, torch.float32)
    sampler = batch.sampling_logprobs_B_L.to(mask.device, torch.float32)
    return torch.where(mask > 0, teacher - sampler, 0.0)


@torch.no_grad()
def turns_remaining(batch: RolloutBatch) -> Tensor:
    """Per token, the turns of its row after the token's own turn (long ``[B, L]``; 0 on the
    last turn and on padding). Without ``turn_ids_B_L`` a row is one turn (all 0)."""
    mask = batch.attention_mask_B_L.bool()
    if batch.turn_ids_B_L is None:
        return torch.zeros(mask.shape, dtype=torch.long)
    turn = batch.turn_ids_B_L.to(torch.long)
    last_B = torch.where(mask, turn, -1).max(dim=1).values
    return torch.where(mask & (turn >= 0), last_B[:, None] - turn, 0)


@dataclass(frozen=True)
class TurnLevel:
    """``turn_level``: per-token weight by turn; key-step turns weigh ``key_weight``, others 1.

    Key steps are the tokens ``batch.key_step_B_L`` marks (``agent_score`` marks the teacher's
    rewrites of located mistakes); a batch without the field gets weight 1 everywhere (the
    ``per_token`` scheme). ``scale_by_reward`` multiplies each row's weights by its
    ``rewards_B`` (e.g. the key-step reward of short-horizon rows: a key step that did not help
    is not imitated). ``normalize`` rescales the weights to average 1 over the loss tokens (the
    loop normalises the loss by the token count, not by the weights). Advantages are the
    per-token ones, -(log q_sampler - log p).
    """

    key_weight: float = 2.0
    """Weight of key-step tokens."""
    scale_by_reward: bool = False
    """Multiply each row's weights by its reward (needs ``rewards_B``)."""
    normalize: bool = False
    """Rescale weights to mean 1 over the loss tokens."""

    def __post_init__(self):
        if self.key_weight < 0:
            raise ValueError(f"turn_level key_weight must be >= 0, got {self.key_weight}")

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask = _mask(batch)
        w = mask.clone()
        key_tokens = 0.0
        if batch.key_step_B_L is not None:
            key = batch.key_step_B_L.to(mask.device).bool() & (mask > 0)
            w = torch.where(key, self.key_weight, w)
            key_tokens = float(key.sum())
        if self.scale_by_reward:
            if batch.rewards_B is None:
                raise ValueError("credit scheme turn_level with scale_by_reward needs rewards_B (the agent samplers attach them)")
            w = w * batch.rewards_B.to(mask.device, torch.float32)[:, None]
        if self.normalize:
            mean = w.sum() / mask.sum().clamp(min=1)
            w = torch.where(mask > 0, w / mean.clamp(min=1e-12), 0.0)
        adv = _teacher_advantages(batch, scores, mask)
        metrics = {"advantage": float((adv * mask).sum()), "credit_weight": float((w * mask).sum()), "key_tokens": key_tokens}
        return Credit(weights_B_L=w, advantages_B_L=adv, metrics=metrics)


@dataclass(frozen=True)
class DiscountedEpisode:
    """``discounted_episode``: the episode's outcome, discounted by the turns left.

    A_t = gamma^(turns remaining after t's turn) * (R_b - baseline) on every loss token t of
    row b (the last turn gets the full centred reward, earlier turns less), plus ``kl_coef``
    times the per-token teacher advantage -(log q_sampler - log p). R_b = ``rewards_B`` (the
    agent samplers attach episode success; rows without rewards count as 0). ``baseline``:
    ``mean`` = the mean reward of the micro-batch's rows, ``zero`` = none. Weights = loss
    mask. For policy-gradient updates (``[loss] update = "advantage"`` or ``"ppo_clip"``).
    """

    gamma: float = 1.0
    """Discount per remaining turn, in [0, 1]."""
    baseline: Literal["mean", "zero"] = "mean"
    """What is subtracted from the reward."""
    kl_coef: float = 0.0
    """Weight of the per-token teacher advantage added to the outcome term."""

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"discounted_episode gamma must be in [0, 1], got {self.gamma}")
        if self.baseline not in ("mean", "zero"):
            raise ValueError(f"discounted_episode baseline must be 'mean' or 'zero', got {self.baseline!r}")

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask = _mask(batch)
        B = mask.shape[0]
        rewards = torch.zeros(B) if batch.rewards_B is None else batch.rewards_B.to(torch.float32)
        rewards = rewards.to(mask.device)
        centred_B = rewards - (rewards.mean() if self.baseline == "mean" else 0.0)
        discount = torch.pow(torch.tensor(self.gamma, dtype=torch.float32), turns_remaining(batch).to(torch.float32))
        adv = discount.to(mask.device) * centred_B[:, None] * mask
        if self.kl_coef:
            adv = adv + self.kl_coef * _teacher_advantages(batch, scores, mask)
        metrics = {"advantage": float((adv * mask).sum()), "credit_weight": float(mask.sum()),
                   "reward": float((rewards[:, None] * mask).sum())}
        return Credit(weights_B_L=mask, advantages_B_L=adv, metrics=metrics)
