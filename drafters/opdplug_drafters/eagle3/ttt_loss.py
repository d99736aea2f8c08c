"""The training-time-test (TTT) loss of an EAGLE-3 head, as pure functions of tensors.

Shapes: ``B`` rows, ``L`` positions (right-padded), ``N = L - 1`` chain roots per row, ``J`` TTT
steps, ``Vd`` draft vocabulary. Position conventions (``Eagle3Head.ttt_forward``): index ``t`` of
step ``j``'s logits predicts token ``x_{t+2+j}``; the target's distribution for that token is
its next-token logits at position ``t+1+j``.

A predicted token is trained on when it is a loss token (``loss_mask_B_L``: the completion).
Per step ``j`` the soft cross-entropy ``-sum_v p_target(v) log q_head(v)`` over the draft
vocabulary (the target's logits restricted to the draft ids and renormalised) is summed over
those tokens: ``ce_sum_J[j]``, counted in ``count_J[j]``. Two ways to weigh the steps:

* ``per_step_mean`` divides each step by its own count (``sum_j decay^j ce_sum_j / count_j``):
  what ``ttt.ttt_loss`` reports for one batch (held-out evaluation, tests);
* ``token_sum`` is ``sum_j decay^j ce_sum_j``: the core loop divides it by the global number of
  loss tokens of the optimizer step (all micro-batches, all processes), so the update does not
  depend on how the batch is split. Every step has as many predicted tokens as step 0 unless a
  prompt is shorter than ``j + 2`` tokens (a token at index ``p`` is predicted at step ``j`` only
  from a root ``p - 2 - j >= 0``), so the two agree whenever every prompt has at least
  ``J + 1`` tokens; SpecForge likewise divides every step by one common count.

Diagnostics (no gradient), all token sums so that they add up over micro-batches and processes:
``match_J`` (the head's argmax, mapped to a target id, equals the target's full-vocabulary
argmax), ``accepted_K`` (entry ``k - 1``: over chain roots, the number of leading agreeing steps
capped at ``k``, i.e. greedy speculative decoding's accepted drafts with ``k`` drafts per round)
and ``draft_mass`` (the target's probability inside the draft vocabulary at the roots).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class TTTTerms:
    """The token sums of one batch's TTT unroll."""

    ce_sum_J: list
    """Per step, the soft cross-entropy summed over its predicted loss tokens (0-dim float32
    tensors with gradient)."""
    count_J: list[int]
    """Per step, how many loss tokens it predicts."""
    match_J: list[int]
    """Per step, how many of those the head's argmax gets right (the target's argmax)."""
    accepted_K: list[int]
    """Entry ``k - 1``: the sum over roots of min(k, leading agreeing steps)."""
    roots: int
    """Chain roots: loss tokens predicted at step 0 (``count_J[0]``)."""
    draft_mass: float
    """Sum over roots of the target's probability inside the draft vocabulary."""


def shift(x_B_L: torch.Tensor, offset: int, N: int, fill=0) -> torch.Tensor:
    """``x[:, offset : offset + N]``, padded with ``fill`` past the end."""
    B, L = x_B_L.shape[:2]
    pad = x_B_L.new_full((B, max(0, offset + N - L), *x_B_L.shape[2:]), fill)
    return torch.cat([x_B_L, pad], dim=1)[:, offset:offset + N]


def ttt_terms(
    logits_per_step: Sequence[torch.Tensor],
    target_logits_B_L_Vd: torch.Tensor,
    target_argmax_B_L: torch.Tensor,
    target_draft_mass_B_L: torch.Tensor,
    loss_mask_B_L: torch.Tensor,
    draft_ids_Vd: torch.Tensor,
) -> TTTTerms:
    """The token sums of a TTT unroll (see the module docstring).

    :param logits_per_step: ``J`` tensors ``[B, N, Vd]``, the head's draft logits per step.
    :param target_logits_B_L_Vd: the target's next-token logits at the draft ids (float32).
    :param target_argmax_B_L: the target's most likely next token, full vocabulary (long).
    :param target_draft_mass_B_L: the target's next-token probability inside the draft vocabulary.
    :param loss_mask_B_L: 1 on the tokens to train on (long or bool).
    :param draft_ids_Vd: target id of every draft id (long).
    """
    N = target_logits_B_L_Vd.shape[1] - 1
    ce_sum, counts, matches, match_masks, valids = [], [], [], [], []
    for j, draft_logits_B_N_Vd in enumerate(logits_per_step):
        valid_B_N = shift(loss_mask_B_L, 2 + j, N).bool()
        target_logp_B_N_Vd = torch.log_softmax(shift(target_logits_B_L_Vd, 1 + j, N), dim=-1)
        draft_logp_B_N_Vd = torch.log_softmax(draft_logits_B_N_Vd.float(), dim=-1)
        ce_B_N = -(target_logp_B_N_Vd.exp() * draft_logp_B_N_Vd).sum(-1)
        ce_sum.append((ce_B_N * valid_B_N).sum())
        counts.append(int(valid_B_N.sum()))
        with torch.no_grad():
            hit_B_N = draft_ids_Vd[draft_logits_B_N_Vd.argmax(-1)] == shift(target_argmax_B_L, 1 + j, N, -1)
            match_masks.append(hit_B_N & valid_B_N)
            matches.append(int(match_masks[-1].sum()))
            valids.append(valid_B_N)
    with torch.no_grad():
        roots_B_N = valids[0]
        run_B_N = torch.stack(match_masks, dim=-1).long().cumprod(dim=-1).sum(-1)  # leading agreeing steps
        accepted = [int((run_B_N.clamp(max=k) * roots_B_N).sum()) for k in range(1, len(match_masks) + 1)]
        draft_mass = float((shift(target_draft_mass_B_L, 1, N) * roots_B_N).sum())
    return TTTTerms(ce_sum, counts, matches, accepted, int(roots_B_N.sum()), draft_mass)


def step_weights(steps: int, step_decay: float) -> list[float]:
    """``step_decay ** j`` for ``j < steps``: how much each TTT step counts."""
    return [step_decay ** j for j in range(steps)]


def per_step_mean(terms: TTTTerms, step_decay: float) -> torch.Tensor:
    """``sum_j decay^j ce_sum_j / count_j`` (a step with no token counts 0)."""
    loss = terms.ce_sum_J[0].new_zeros(())
    for w, s, n in zip(step_weights(len(terms.ce_sum_J), step_decay), terms.ce_sum_J, terms.count_J):
        loss = loss + w * (s / max(n, 1))
    return loss


def token_sum(terms: TTTTerms, step_decay: float) -> torch.Tensor:
    """``sum_j decay^j ce_sum_j``: to be divided by the global count of loss tokens."""
    loss = terms.ce_sum_J[0].new_zeros(())
    for w, s in zip(step_weights(len(terms.ce_sum_J), step_decay), terms.ce_sum_J):
        loss = loss + w * s
    return loss


def summary(terms: TTTTerms, loss: float) -> dict:
    """The per-batch metrics ``ttt.ttt_loss`` reports: ``loss``, ``ce`` and ``top1`` per step (NaN
    where a step has no token), ``accept_len`` (all ``J`` drafts), ``accept_len_by_k``,
    ``draft_mass`` and ``tokens`` (roots)."""
    nan = float("nan")
    n = terms.roots
    by_k = [1.0 + a / n if n else nan for a in terms.accepted_K]
    return {
        "loss": loss,
        "ce": [float(s.detach() / c) if c else nan for s, c in zip(terms.ce_sum_J, terms.count_J)],
        "top1": [m / c if c else nan for m, c in zip(terms.match_J, terms.count_J)],
        "accept_len": by_k[-1], "accept_len_by_k": by_k,
        "draft_mass": terms.draft_mass / n if n else nan, "tokens": n,
    }
