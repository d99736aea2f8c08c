"""Update rules: turn a ``SupportResult`` into a per-token loss.

Each rule is a frozen dataclass whose fields are its options, called as

    update(result, batch, scores, credit) -> (loss_B_L, metric_sums)

``loss_B_L`` is 0 off-mask and is *summed* by the caller (the loop divides by the global count of
trained tokens). ``metric_sums`` holds only the rule's own token-summed diagnostics (the caller
merges them with ``result.metric_sums``); a rule that clamps reports its count as
``"clamped"`` *added to* the support's count, so that the merged dict (update wins on equal
keys) carries the total.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from opdplug.types import Credit, RolloutBatch, TeacherScores

from .supports import SupportResult

__all__ = ["Direct", "Reinforce", "Advantage", "PPOClip"]

Tensor = torch.Tensor


def _weights(result: SupportResult, credit: Credit) -> Tensor:
    """Credit weights on the result's device and dtype, 0 off-mask (detached)."""
    w = credit.weights_B_L.to(result.values_B_L.device, result.values_B_L.dtype).detach()
    return w * result.mask_B_L


def _advantages(result: SupportResult, credit: Credit, who: str) -> Tensor:
    """Credit advantages (detached), or a clear error when the scheme gave none."""
    if credit.advantages_B_L is None:
        raise ValueError(f"the {who} update needs credit advantages; the credit scheme returned none")
    return credit.advantages_B_L.to(result.values_B_L.device, result.values_B_L.dtype).detach() * result.mask_B_L


def _ratio(result: SupportResult, batch: RolloutBatch) -> Tensor:
    """Importance ratio q_theta(x) / q_sampler(x) per token (1 on-policy), with grad; 1 off-mask."""
    sampling = batch.sampling_logprobs_B_L.to(result.values_B_L.device, result.values_B_L.dtype)
    log_ratio = torch.where(result.mask_B_L, result.student_token_logprobs_B_L - sampling, 0.0)
    return log_ratio.exp()


@dataclass(frozen=True)
class Direct:
    """``direct``: backpropagate the divergence itself, loss_t = w_t * value_t."""

    def __call__(self, result: SupportResult, batch: RolloutBatch, scores: TeacherScores, credit: Credit):
        return _weights(result, credit) * result.values_B_L, {}


@dataclass(frozen=True)
class Reinforce:
    """``reinforce``: MiniLLM-style policy gradient on the sequence-level reverse KL.

    Cost per row R_b = sum over its masked tokens of (log q_t - log p_t), detached (q: the
    student's current log-prob of the token, p: the teacher's). Baseline = mean of R_b over the
    rows of this micro-batch that have at least one masked token (empty rows would bias it to 0
    and get no loss anyway). Then

        loss_t = w_t (R_b - baseline) log q_t  [+ w_t value_t if add_direct]

    whose gradient is the score-function estimate of grad E[R] (minimized); ``add_direct`` adds
    the single-step term (MiniLLM's per-token part: the divergence at each step, backpropagated).
    With one row the baseline equals R and the policy-gradient term vanishes.
    """

    add_direct: bool = True

    def __call__(self, result: SupportResult, batch: RolloutBatch, scores: TeacherScores, credit: Credit):
        mask = result.mask_B_L
        w = _weights(result, credit)
        logq = result.student_token_logprobs_B_L
        logp = scores.token_logprobs_B_L.to(logq.device, logq.dtype)
        with torch.no_grad():
            cost_B = torch.where(mask, logq - logp, 0.0).sum(-1)
            has_tokens_B = mask.any(-1)
            n_rows = has_tokens_B.sum().clamp(min=1)
            baseline = (cost_B * has_tokens_B).sum() / n_rows
            centered_B = torch.where(has_tokens_B, cost_B - baseline, 0.0)
        loss = w * centered_B[:, None] * logq
        if self.add_direct:
            loss = loss + w * result.values_B_L
        return loss, {}


@dataclass(frozen=True)
class Advantage:
    """``advantage``: importance-sampled per-token advantage (the Tinker recipe).

    A_t from the credit scheme (detached; e.g. -(log q_sampler - log p)), ratio_t =
    exp(log q_t - sampling_logprob_t) (1 on-policy, but with the gradient of log q_t), and

        loss_t = -w_t * ratio_t * A_t

    so that on-policy grad loss = -sum_t w_t A_t grad log q_t (REINFORCE with per-token reward).
    """

    def __call__(self, result: SupportResult, batch: RolloutBatch, scores: TeacherScores, credit: Credit):
        w = _weights(result, credit)
        adv = _advantages(result, credit, "advantage")
        return -w * _ratio(result, batch) * adv, {}


@dataclass(frozen=True)
class PPOClip:
    """``ppo_clip``: the clipped surrogate, loss_t = -w_t min(ratio A, clip(ratio, 1-eps, 1+eps) A).

    ``clamped`` counts masked tokens where the clipped branch is the smaller one and differs
    from the unclipped (their gradient is 0), added to the support's own clamp count.
    """

    eps: float = 0.2

    def __post_init__(self):
        if not self.eps > 0:
            raise ValueError(f"ppo_clip eps must be positive, got {self.eps}")

    def __call__(self, result: SupportResult, batch: RolloutBatch, scores: TeacherScores, credit: Credit):
        w = _weights(result, credit)
        adv = _advantages(result, credit, "ppo_clip")
        ratio = _ratio(result, batch)
        unclipped = ratio * adv
        clipped = ratio.clamp(1.0 - self.eps, 1.0 + self.eps) * adv
        loss = -w * torch.minimum(unclipped, clipped)
        with torch.no_grad():
            n_clipped = float(((clipped < unclipped) & result.mask_B_L).sum())
        return loss, {"clamped": result.metric_sums.get("clamped", 0.0) + n_clipped}
