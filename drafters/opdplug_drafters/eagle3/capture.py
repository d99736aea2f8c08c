"""Target feature capture: what an EAGLE-3 head learns from, taken from one target forward.

``capture`` runs the target (frozen, no gradient) over token sequences once and keeps the
auxiliary hidden states at the head's ``aux_layers`` and the target's next-token distribution
reduced to the draft vocabulary (never ``[B, L, V]`` at once: the lm-head is applied chunk by
chunk). In the core loop this is the score stage of an EAGLE-3 run (``FeatureScores``, returned
by ``opd_score`` where a token-level run gets the teacher's log-probs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from opdplug.types import TeacherScores


@dataclass(frozen=True)
class Batch:
    """Target-generated sequences with everything the TTT loss needs. Right-padded.

    The target's full ``[B, L, V]`` logits are never kept: only their draft-vocabulary columns,
    their argmax and the mass the draft vocabulary holds, computed chunk by chunk."""

    input_ids_B_L: torch.Tensor
    """Prompt then target-sampled completion then padding (long)."""
    attention_mask_B_L: torch.Tensor
    """1 on real tokens (long)."""
    loss_mask_B_L: torch.Tensor
    """1 on completion tokens (EOS included): the tokens a draft is trained to predict (long)."""
    features_B_L_A: torch.Tensor
    """The target's hidden states at ``aux_layers``, concatenated (float)."""
    target_logits_B_L_Vd: torch.Tensor
    """The target's next-token logits at the draft vocabulary's ids (draft-id order); position t
    predicts token t + 1 (float32)."""
    target_argmax_B_L: torch.Tensor
    """The target's most likely next token over its FULL vocabulary (long)."""
    target_draft_mass_B_L: torch.Tensor
    """Probability the target puts on the draft vocabulary (float32)."""


@dataclass(frozen=True)
class FeatureScores(TeacherScores):
    """``TeacherScores`` of an EAGLE-3 run: the target's log-prob of every token (as any scorer
    gives) plus the captured ``Batch`` the TTT loss reads."""

    captured: Optional[Batch] = None
    """Features and reduced target distributions of the same rows, on the run's device."""


@torch.no_grad()
def capture(
    target, input_ids_B_L: torch.Tensor, attention_mask_B_L: torch.Tensor, loss_mask_B_L: torch.Tensor,
    aux_layers: Sequence[int], draft_to_target_Vd: torch.Tensor, *, chunk_rows: int = 2048,
    token_logprobs: bool = False,
) -> tuple[Batch, Optional[torch.Tensor]]:
    """One target forward over right-padded sequences: features at ``aux_layers`` (HF
    ``hidden_states[i]``) and the next-token distribution reduced to the draft vocabulary.

    :param target: a Hugging Face causal LM (or a wrapper with ``.module``), frozen.
    :param token_logprobs: also return the target's log-prob of each token ``[B, L]`` (position t
        describes token t, 0 at t = 0), as ``TeacherScores.token_logprobs_B_L`` holds it.
    :return: ``(batch, token_logprobs_B_L or None)``; tensors on the target's device.
    """
    inner = target.module if hasattr(target, "module") else target
    device = next(inner.parameters()).device
    ids, mask = input_ids_B_L.to(device), attention_mask_B_L.to(device)
    out = inner.model(
        input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        output_hidden_states=True, use_cache=False,
    )
    features = torch.cat([out.hidden_states[i] for i in aux_layers], dim=-1)
    final_N_H = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])  # after the final norm
    draft_ids = draft_to_target_Vd.to(device)
    next_ids_N = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1).reshape(-1)  # token t + 1 (the last is unused)
    sub, argmax, mass, chosen = [], [], [], []
    for start in range(0, final_N_H.shape[0], chunk_rows):
        logits_C_V = inner.lm_head(final_N_H[start:start + chunk_rows]).float()
        sub.append(logits_C_V[:, draft_ids])
        argmax.append(logits_C_V.argmax(-1))
        mass.append(torch.softmax(logits_C_V, dim=-1)[:, draft_ids].sum(-1))
        if token_logprobs:
            logp_C_V = torch.log_softmax(logits_C_V, dim=-1)
            chosen.append(logp_C_V.gather(-1, next_ids_N[start:start + chunk_rows, None])[:, 0])
    B, L = ids.shape
    batch = Batch(
        ids, mask, loss_mask_B_L.to(device), features,
        torch.cat(sub).view(B, L, -1), torch.cat(argmax).view(B, L), torch.cat(mass).view(B, L),
    )
    if not token_logprobs:
        return batch, None
    # Position t's logits score token t + 1: shift right so position t describes token t.
    next_logp_B_L = torch.cat(chosen).view(B, L)
    logp_B_L = torch.cat([next_logp_B_L.new_zeros(B, 1), next_logp_B_L[:, :-1]], dim=1)
    return batch, logp_B_L * loss_mask_B_L.to(device)


def feature_scores(target, batch, aux_layers: Sequence[int], draft_to_target_Vd: torch.Tensor) -> FeatureScores:
    """The score stage of an EAGLE-3 run: ``capture`` over a ``RolloutBatch``."""
    captured, logp_B_L = capture(target, batch.input_ids_B_L, batch.attention_mask_B_L, batch.loss_mask_B_L,
                                 aux_layers, draft_to_target_Vd, token_logprobs=True)
    return FeatureScores(token_logprobs_B_L=logp_B_L, captured=captured)
