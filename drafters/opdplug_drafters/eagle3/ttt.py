"""One training-time-test (TTT) step of an EAGLE-3 head: the target's batch and the loss.

``generate`` samples completions with the TARGET itself (what it will be asked to verify at
serving time); ``target_batch`` runs one no-grad target forward over them for the features at
``aux_layers`` and the target's next-token distributions (reduced to the draft vocabulary, never
``[B, L, V]`` at once); ``ttt_loss`` unrolls the head and scores it.

Loss: at TTT step ``j`` the head predicts token ``x_{t+2+j}`` (see ``Eagle3Head.ttt_forward``);
its soft cross-entropy against the target's distribution at that position restricted to the
draft vocabulary and renormalised (``log_softmax`` of the target's logits at the draft ids),
averaged over completion tokens, weighted ``step_decay ** j`` and summed over steps.

Acceptance proxies logged per TTT step: ``top1[j]``, how often the head's argmax (mapped to a
target id) equals the target's argmax; and ``accept_len``, the mean over chain roots of
1 + the number of leading steps whose argmax agrees, i.e. greedy speculative decoding's tokens
per target forward with ``ttt_steps`` drafts (bonus token included, as SGLang's
``spec_accept_length``). With greedy data (``temperature = 0``) it is exact on that data: the
teacher-forced tokens are then the ones greedy drafting would have fed. Chains rooted near the
end of a completion stop at its end, so the ceiling is below ``ttt_steps + 1`` (as in serving,
where drafts past EOS are cut).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from opdplug_local import sampling

from .model import Eagle3Head

if TYPE_CHECKING:  # pragma: no cover
    from .train import Eagle3Options


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


def generate(target, prompts, options: "Eagle3Options", *, eos_id: int, pad_id: int, seed: int) -> sampling.SampleResult:
    """The target's own completions of ``prompts`` (seeded)."""
    return sampling.sample(
        target, [list(p.prompt_ids) for p in prompts], max_new_tokens=options.max_new_tokens,
        temperature=options.temperature, eos_id=eos_id, pad_id=pad_id,
        generator=torch.Generator().manual_seed(seed),
    )


@torch.no_grad()
def target_batch(
    target, sample: sampling.SampleResult, aux_layers: Sequence[int], draft_to_target_Vd: torch.Tensor,
    *, chunk_rows: int = 2048,
) -> Batch:
    """One target forward over ``sample``'s sequences: features at ``aux_layers`` (HF
    ``hidden_states[i]``) and the target's next-token distribution, reduced to the draft vocabulary.

    The lm-head is applied ``chunk_rows`` positions at a time, so ``[B, L, V]`` never exists."""
    ids, mask = sample.input_ids_B_L, sample.attention_mask_B_L
    inner = target.module if hasattr(target, "module") else target
    out = inner.model(
        input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        output_hidden_states=True, use_cache=False,
    )
    features = torch.cat([out.hidden_states[i] for i in aux_layers], dim=-1)
    final_N_H = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])  # after the final norm
    draft_ids = draft_to_target_Vd.to(final_N_H.device)
    sub, argmax, mass = [], [], []
    for start in range(0, final_N_H.shape[0], chunk_rows):
        logits_C_V = inner.lm_head(final_N_H[start:start + chunk_rows]).float()
        sub.append(logits_C_V[:, draft_ids])
        argmax.append(logits_C_V.argmax(-1))
        mass.append(torch.softmax(logits_C_V, dim=-1)[:, draft_ids].sum(-1))
    B, L = ids.shape
    return Batch(
        ids, mask, sample.completion_mask_B_L, features,
        torch.cat(sub).view(B, L, -1), torch.cat(argmax).view(B, L), torch.cat(mass).view(B, L),
    )


# ----------------------------------------------------------------------------- loss
def _shift(x_B_L: torch.Tensor, offset: int, N: int, fill=0) -> torch.Tensor:
    """``x[:, offset : offset + N]``, padded with ``fill`` past the end."""
    B, L = x_B_L.shape[:2]
    pad = x_B_L.new_full((B, max(0, offset + N - L), *x_B_L.shape[2:]), fill)
    return torch.cat([x_B_L, pad], dim=1)[:, offset:offset + N]


def ttt_loss(head: Eagle3Head, batch: Batch, ttt_steps: int, step_decay: float) -> tuple[torch.Tensor, dict]:
    """The weighted TTT soft cross-entropy and its acceptance metrics (see the module docstring).

    :return: ``(loss, metrics)``; ``metrics`` holds plain floats: ``loss``, ``ce`` and ``top1``
        (one per step; NaN where a step has no valid position), ``accept_len`` (``ttt_steps``
        drafts per round), ``accept_len_by_k`` (entry ``k - 1``: with ``k`` drafts), ``draft_mass``
        (target probability mass inside the draft vocabulary) and ``tokens`` (step-0 positions).
    """
    logits_per_step = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, ttt_steps)
    B, L = batch.input_ids_B_L.shape
    N = L - 1
    draft_ids_Vd = head.draft_to_target_Vd
    loss = batch.target_logits_B_L_Vd.new_zeros(())
    ce, top1, matches, valids = [], [], [], []
    for j, draft_logits_B_N_Vd in enumerate(logits_per_step):
        # Index t at step j predicts token t + 2 + j, from the target's logits at t + 1 + j.
        valid_B_N = _shift(batch.loss_mask_B_L, 2 + j, N).bool()
        target_logp_B_N_Vd = torch.log_softmax(_shift(batch.target_logits_B_L_Vd, 1 + j, N), dim=-1)
        draft_logp_B_N_Vd = torch.log_softmax(draft_logits_B_N_Vd.float(), dim=-1)
        ce_B_N = -(target_logp_B_N_Vd.exp() * draft_logp_B_N_Vd).sum(-1)
        n = int(valid_B_N.sum())
        step_ce = (ce_B_N * valid_B_N).sum() / max(n, 1)
        loss = loss + (step_decay ** j) * step_ce
        with torch.no_grad():
            match_B_N = draft_ids_Vd[draft_logits_B_N_Vd.argmax(-1)] == _shift(batch.target_argmax_B_L, 1 + j, N, -1)
            matches.append(match_B_N & valid_B_N)
            valids.append(valid_B_N)
            ce.append(float(step_ce.detach()) if n else float("nan"))
            top1.append(float((match_B_N & valid_B_N).sum()) / n if n else float("nan"))
    with torch.no_grad():
        roots_B_N = valids[0]
        run_B_N = torch.stack(matches, dim=-1).long().cumprod(dim=-1).sum(-1)  # leading agreeing steps
        n_roots = int(roots_B_N.sum())
        accept_len = 1.0 + float((run_B_N * roots_B_N).sum()) / n_roots if n_roots else float("nan")
        # The same with k < ttt_steps drafts per round (a serving k of 4 cannot exceed 5).
        by_k = [1.0 + float((run_B_N.clamp(max=k) * roots_B_N).sum()) / n_roots if n_roots else float("nan")
                for k in range(1, len(matches) + 1)]
        mass_B_N = _shift(batch.target_draft_mass_B_L, 1, N)
        draft_mass = float((mass_B_N * roots_B_N).sum()) / n_roots if n_roots else float("nan")
    metrics = {
        "loss": float(loss.detach()), "ce": ce, "top1": top1, "accept_len": accept_len,
        "accept_len_by_k": by_k, "draft_mass": draft_mass, "tokens": n_roots,
    }
    return loss, metrics
