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

from typing import TYPE_CHECKING, Sequence

import torch

from opdplug_local import sampling

from .capture import Batch, capture
from .model import Eagle3Head
from .ttt_loss import per_step_mean, summary, ttt_terms

if TYPE_CHECKING:  # pragma: no cover
    from .options import Eagle3Options


def generate(target, prompts, options: "Eagle3Options", *, eos_id: int, pad_id: int, seed: int) -> sampling.SampleResult:
    """The target's own completions of ``prompts`` (seeded)."""
    return sampling.sample(
        target, [list(p.prompt_ids) for p in prompts], max_new_tokens=options.max_new_tokens,
        temperature=options.temperature, eos_id=eos_id, pad_id=pad_id,
        generator=torch.Generator().manual_seed(seed),
    )


def target_batch(
    target, sample: sampling.SampleResult, aux_layers: Sequence[int], draft_to_target_Vd: torch.Tensor,
    *, chunk_rows: int = 2048,
) -> Batch:
    """One target forward over ``sample``'s sequences (``capture.capture``): features at
    ``aux_layers`` and the target's next-token distribution, reduced to the draft vocabulary."""
    batch, _ = capture(target, sample.input_ids_B_L, sample.attention_mask_B_L, sample.completion_mask_B_L,
                       aux_layers, draft_to_target_Vd, chunk_rows=chunk_rows)
    return batch


# ----------------------------------------------------------------------------- loss
def ttt_loss(head: Eagle3Head, batch: Batch, ttt_steps: int, step_decay: float) -> tuple[torch.Tensor, dict]:
    """The weighted TTT soft cross-entropy of one batch, each step averaged over its own tokens
    (``ttt_loss.per_step_mean``), and its acceptance metrics (``ttt_loss.summary``).

    :return: ``(loss, metrics)``; ``metrics`` holds plain floats: ``loss``, ``ce`` and ``top1``
        (one per step; NaN where a step has no valid position), ``accept_len`` (``ttt_steps``
        drafts per round), ``accept_len_by_k`` (entry ``k - 1``: with ``k`` drafts), ``draft_mass``
        (target probability mass inside the draft vocabulary) and ``tokens`` (step-0 positions).
    """
    logits_per_step = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, ttt_steps)
    terms = ttt_terms(logits_per_step, batch.target_logits_B_L_Vd, batch.target_argmax_B_L, batch.target_draft_mass_B_L,
                      batch.loss_mask_B_L, head.draft_to_target_Vd)
    loss = per_step_mean(terms, step_decay)
    return loss, summary(terms, float(loss.detach()))
