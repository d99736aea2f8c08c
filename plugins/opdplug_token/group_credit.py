"""Group-relative credit for RL and its OPD hybrids, ``scheme(batch, scores) -> Credit``.

The rows of a batch that share ``Prompt.group`` (``rollout.samples_per_prompt`` completions of one
prompt, kept together by the loop) form a group. The GRPO outcome advantage of row b in group g is

    A_b = (r_b - mean_g r) / (std_g r + eps)     (``normalize_std = true``, GRPO)
    A_b =  r_b - mean_g r                        (``normalize_std = false``, Dr. GRPO)

with the unbiased standard deviation (n - 1, as TRL's GRPO); a group of one row, or a row without a
group (``group < 0``), gets A_b = 0. It applies to every masked token of the row. Two hybrids add
the teacher, with ``d_t = log q_sampler(x_t) - log p_teacher(x_t)`` the per-token log-ratio:

* ``grpo_teacher_kl`` (the teacher as the KL anchor in place of a reference model): the return is
  penalised by the teacher's reverse KL still to come, A_t = A_b - beta * sum_{s >= t} d_s, the
  score-function gradient of E[r] - beta * KL(pi || teacher) on the sampled sequence;
* ``grpo_teacher_shaping`` (the teacher's log-ratio as dense reward shaping): A_t = A_b - weight * d_t,
  the per-token OPD advantage of the Tinker recipe added beside the outcome advantage.

All are pure, under ``no_grad``, in float32; 0 off the loss mask; pair them with ``update =
"advantage"`` (or ``ppo_clip``). Rewards come from ``credit.verifier``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from opdplug.types import Credit, RolloutBatch, TeacherScores

from .credit import discounted_cumsum, per_token_advantages

__all__ = ["GRPO", "GRPOTeacherKL", "GRPOTeacherShaping", "group_advantages", "group_ids"]

Tensor = torch.Tensor


def group_ids(batch: RolloutBatch) -> Tensor:
    """``Prompt.group`` of each row ``[B]`` (long); -1 where the batch carries no prompts."""
    if not batch.prompts:
        return torch.full((batch.batch_size,), -1, dtype=torch.long)
    return torch.tensor([getattr(p, "group", -1) for p in batch.prompts], dtype=torch.long)


@torch.no_grad()
def group_advantages(rewards_B: Tensor, groups_B: Tensor, normalize_std: bool, eps: float) -> Tensor:
    """Group-normalised outcome advantage per row ``[B]`` (float32), see the module docstring."""
    rewards_B = rewards_B.to(torch.float32)
    groups_B = groups_B.to(rewards_B.device)
    out_B = torch.zeros_like(rewards_B)
    for g in torch.unique(groups_B).tolist():
        if g < 0:
            continue
        rows = groups_B == g
        if int(rows.sum()) < 2:
            continue
        r = rewards_B[rows]
        centered = r - r.mean()
        out_B[rows] = centered / (r.std() + eps) if normalize_std else centered
    return out_B


def _outcome(batch: RolloutBatch, who: str, normalize_std: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(mask ``[B, L]``, outcome advantage per token ``[B, L]``, rewards ``[B]``)."""
    if batch.rewards_B is None:
        raise ValueError(f"credit scheme {who} needs rewards: set credit.verifier")
    mask = batch.loss_mask_B_L.to(torch.float32)
    rewards_B = batch.rewards_B.to(mask.device, torch.float32)
    adv_B = group_advantages(rewards_B, group_ids(batch), normalize_std, eps).to(mask.device)
    return mask, adv_B[:, None] * mask, rewards_B


def _metrics(adv_B_L: Tensor, mask: Tensor, rewards_B: Tensor) -> dict:
    """Token-summed diagnostics (the loop divides by the token count)."""
    return {"advantage": float((adv_B_L * mask).sum()), "credit_weight": float(mask.sum()),
            "reward": float((rewards_B[:, None] * mask).sum())}


def _check(eps: float, **nonneg: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    for name, value in nonneg.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class GRPO:
    """``grpo``: the group-normalised outcome advantage on every token of the row."""

    normalize_std: bool = True
    """Divide by the group's reward standard deviation (GRPO); false: only centre it (Dr. GRPO)."""
    eps: float = 1e-4
    """Added to the standard deviation (a group with equal rewards gets advantage 0 either way)."""

    def __post_init__(self):
        _check(self.eps)

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask, adv, rewards_B = _outcome(batch, "grpo", self.normalize_std, self.eps)
        return Credit(weights_B_L=mask, advantages_B_L=adv, metrics=_metrics(adv, mask, rewards_B))


@dataclass(frozen=True)
class GRPOTeacherKL:
    """``grpo_teacher_kl``: GRPO with the teacher's reverse KL as the anchor,
    A_t = A_b - beta * sum_{s >= t, masked} (log q_sampler - log p_teacher)_s."""

    beta: float = 0.05
    """Weight of the teacher anchor (GRPO's KL coefficient)."""
    normalize_std: bool = True
    """As ``grpo``."""
    eps: float = 1e-4
    """As ``grpo``."""

    def __post_init__(self):
        _check(self.eps, beta=self.beta)

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask, outcome, rewards_B = _outcome(batch, "grpo_teacher_kl", self.normalize_std, self.eps)
        kl_to_go = -discounted_cumsum(per_token_advantages(batch, scores), mask, 1.0)
        adv = outcome - self.beta * kl_to_go
        metrics = _metrics(adv, mask, rewards_B)
        metrics["teacher_kl_to_go"] = float((kl_to_go * mask).sum())
        return Credit(weights_B_L=mask, advantages_B_L=adv, metrics=metrics)


@dataclass(frozen=True)
class GRPOTeacherShaping:
    """``grpo_teacher_shaping``: GRPO plus the teacher's per-token log-ratio as dense shaping,
    A_t = A_b + weight * (log p_teacher - log q_sampler)_t."""

    weight: float = 1.0
    """Weight of the dense teacher term (0: plain GRPO; alone it is the Tinker OPD advantage)."""
    normalize_std: bool = True
    """As ``grpo``."""
    eps: float = 1e-4
    """As ``grpo``."""

    def __post_init__(self):
        _check(self.eps, weight=self.weight)

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch, scores: TeacherScores) -> Credit:
        mask, outcome, rewards_B = _outcome(batch, "grpo_teacher_shaping", self.normalize_std, self.eps)
        adv = outcome + self.weight * per_token_advantages(batch, scores)
        return Credit(weights_B_L=mask, advantages_B_L=adv, metrics=_metrics(adv, mask, rewards_B))
