"""Batched, KV-cached sampling and scoring for local Hugging Face causal LMs.

The local backend's rollouts and teacher scores. Everything works on a model as given: plain, or
wrapped by DDP / accelerate / peft (only ``model(...)`` forward calls are made, never
``.generate``), on whatever device its parameters live.

Temperature semantics, the same everywhere in opdplug: a distribution at temperature ``T`` is
``softmax(logits / T)`` over the full vocabulary. ``T == 0`` means greedy decoding; log-probs
are then reported at ``T = 1``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import fastpath


@dataclass(frozen=True)
class SampleResult:
    """Completions sampled for a batch of prompts. Every ``*_B_L`` tensor is right-padded."""

    input_ids_B_L: torch.Tensor
    """Prompt ids then generated ids (EOS included when produced), then ``pad_id`` (long)."""
    attention_mask_B_L: torch.Tensor
    """1 on prompt and generated tokens, 0 on padding (long)."""
    completion_mask_B_L: torch.Tensor
    """1 on generated tokens (the EOS included), 0 on prompt and padding (long)."""
    logprobs_B_L: torch.Tensor
    """Log-prob of each generated token under ``softmax(logits / temperature)`` over the full
    vocabulary (at temperature 1 when greedy); 0 elsewhere (float32). Top-p truncation is NOT
    reflected: this is the untruncated policy's log-prob, the one a loss compares with."""
    prompt_lens_B: torch.Tensor
    """Number of prompt tokens per row (long); the completion starts at this index."""
    truncated_B: torch.Tensor
    """True where no EOS was generated within ``max_new_tokens`` (bool)."""

    @property
    def completion_lens_B(self) -> torch.Tensor:
        """Number of generated tokens per row (long), EOS included."""
        return self.completion_mask_B_L.sum(-1)

    def completions(self) -> list[list[int]]:
        """The generated ids of each row as Python lists (EOS included when produced)."""
        out = []
        for row_L, mask_L in zip(self.input_ids_B_L.tolist(), self.completion_mask_B_L.tolist()):
            out.append([tok for tok, m in zip(row_L, mask_L) if m])
        return out


def _device_of(model) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless stand-in)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _positions(attention_mask_B_L: torch.Tensor) -> torch.Tensor:
    """Position ids counting only attended tokens, so left and right padding give equal positions."""
    return (attention_mask_B_L.cumsum(-1) - 1).clamp(min=0)


def _nucleus_filter(probs_B_V: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs_B_V`` with everything outside the top-p nucleus zeroed (not renormalised).

    The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p``; the most
    likely token is always kept.
    """
    sorted_B_V, order_B_V = probs_B_V.sort(dim=-1, descending=True)
    mass_before_B_V = sorted_B_V.cumsum(-1) - sorted_B_V
    sorted_B_V = sorted_B_V.masked_fill(mass_before_B_V >= top_p, 0.0)
    return torch.zeros_like(probs_B_V).scatter(-1, order_B_V, sorted_B_V)


def _inverse_cdf(probs_B_V: torch.Tensor, uniforms_B: torch.Tensor) -> torch.Tensor:
    """Per row, the token whose cumulative-probability interval holds ``u * total mass``.

    Each row depends only on its own probabilities and uniform (no batch-wide random stream),
    and a token of zero probability is never chosen. The cumulative sum is taken in float64 so
    that tiny probabilities keep their own intervals."""
    cdf_B_V = probs_B_V.double().cumsum(-1)
    target_B_1 = uniforms_B.to(cdf_B_V.device, torch.float64)[:, None] * cdf_B_V[:, -1:]
    token_B = torch.searchsorted(cdf_B_V, target_B_1, right=True).squeeze(-1)
    return token_B.clamp(max=probs_B_V.shape[-1] - 1)


def _pick(
    logits_B_V: torch.Tensor, temperature: float, top_p: float, generator: Optional[torch.Generator],
    uniforms_B: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the next token per row; return ``(token_B, logprob_B)`` (see ``SampleResult``).

    ``uniforms_B`` (one number in [0, 1) per row) draws by inverse CDF instead of ``generator``."""
    logits_B_V = logits_B_V.float()
    scaled_B_V = logits_B_V / temperature if temperature not in (0.0, 1.0) else logits_B_V
    logp_B_V = torch.log_softmax(scaled_B_V, dim=-1)
    if temperature == 0:
        token_B = logits_B_V.argmax(-1)
    else:
        probs_B_V = logp_B_V.exp()
        if top_p < 1.0:
            probs_B_V = _nucleus_filter(probs_B_V, top_p)
        if uniforms_B is not None:
            token_B = _inverse_cdf(probs_B_V, uniforms_B)
            return token_B, logp_B_V.gather(-1, token_B[:, None]).squeeze(-1)
        # Draw on the generator's device, so one seeded CPU generator serves a model anywhere.
        draw_device = generator.device if generator is not None else probs_B_V.device
        token_B = torch.multinomial(probs_B_V.to(draw_device), 1, generator=generator)
        token_B = token_B.squeeze(-1).to(logits_B_V.device)
    return token_B, logp_B_V.gather(-1, token_B[:, None]).squeeze(-1)


@torch.no_grad()
def sample(
    model,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int | Sequence[int],
    temperature: float,
    top_p: float = 1.0,
    eos_id: int | Sequence[int],
    pad_id: Optional[int],
    generator: Optional[torch.Generator] = None,
    row_seeds: Optional[Sequence[int]] = None,
    prefill=None,
) -> SampleResult:
    """Sample one completion per prompt with the model's KV cache; stop each row at EOS.

    :param model: a causal LM returning ``.logits`` and ``.past_key_values`` (possibly wrapped).
    :param prompt_ids: token ids per prompt (any lengths >= 1; BOS included if wanted).
    :param max_new_tokens: generation budget, one for every row or one per row (each >= 1);
        rows without EOS within their budget are truncated.
    :param temperature: sampling temperature; 0 means greedy (log-probs then at temperature 1).
    :param top_p: nucleus sampling mass (1.0 = off). Only changes which tokens can be drawn;
        ``logprobs_B_L`` stays the full-vocabulary log-prob at ``temperature``.
    :param eos_id: the id, or ids, that end a completion (kept in the output, with its
        log-prob): chat models stop on several (EOS, the template's end of turn).
    :param pad_id: id written after a row ends and into the right padding; None (a tokenizer
        without a pad token) writes the first stop id there, which the masks exclude anyway.
    :param generator: seeded ``torch.Generator`` for reproducible draws (any device), or None.
        One random stream serves the whole batch, so a row's tokens depend on its batch-mates.
    :param row_seeds: instead of ``generator``, one seed per prompt: row b's n-th token is drawn
        by inverse CDF from the n-th number of ``torch.rand`` seeded with ``row_seeds[b]``. A row
        then samples the same tokens whatever batch, process or padding it is in (up to float
        noise in its logits landing exactly on an interval boundary). The training loop's
        samplers use this (``RunContext.row_seeds``).
    :param prefill: on the fast path, replaces ``fast.prefill`` (``prefill_reuse.recorder``).
    :return: a ``SampleResult``, right-padded.

    Prompts are left-padded internally with attention mask and position ids counting only real
    tokens, so each row gets the result it would get alone. After the prompt's forward pass each
    step feeds only the new token. The model's train/eval mode is left as it is.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("sample() needs at least one prompt, each with at least one token")
    device = _device_of(model)
    stop_ids = [int(eos_id)] if isinstance(eos_id, int) else [int(i) for i in eos_id if i is not None]
    if not stop_ids:
        raise ValueError("sample() needs at least one stop id (the tokenizer declares no EOS token)")
    pad_id = stop_ids[0] if pad_id is None else pad_id
    B = len(prompt_ids)
    budgets = [int(max_new_tokens)] * B if isinstance(max_new_tokens, int) else [int(n) for n in max_new_tokens]
    if len(budgets) != B or min(budgets) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, one for all rows or one per prompt; got {max_new_tokens!r}")
    max_new_tokens = max(budgets)
    budget_B = torch.tensor(budgets, device=device)
    uniforms_B_N = None
    if row_seeds is not None:
        if generator is not None:
            raise ValueError("sample() takes generator or row_seeds, not both")
        if len(row_seeds) != B:
            raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {B} prompts")
        # torch.rand's stream is a prefix of a longer one: the uniforms do not depend on the budget.
        uniforms_B_N = torch.stack([
            torch.rand(max_new_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(int(s)))
            for s in row_seeds
        ]).to(device)
    prompt_lens = [len(p) for p in prompt_ids]
    P = max(prompt_lens)
    ids_B_P = torch.full((B, P), pad_id, dtype=torch.long)
    mask_B_P = torch.zeros((B, P), dtype=torch.long)
    for b, ids in enumerate(prompt_ids):
        ids_B_P[b, P - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask_B_P[b, P - len(ids):] = 1
    ids_B_P, mask_B_P = ids_B_P.to(device), mask_B_P.to(device)
    fast = fastpath.fast_forward(model)  # None: the model's own forward (any architecture)
    # The fast path decodes in inference mode (cheaper per operation than no_grad: no version
    # counters or view tracking), and only there: what it returns is rebuilt below as ordinary
    # tensors, which the training step may feed to autograd (inference tensors cannot be saved
    # for it). A model's own forward stays under no_grad: wrappers such as FSDP keep tensors
    # made during the forward, which must not become inference tensors.
    with torch.inference_mode() if fast is not None else contextlib.nullcontext():
        tokens, logprobs, finished_B = _decode(model, fast, ids_B_P, mask_B_P, budget_B, uniforms_B_N, max_new_tokens, temperature=temperature,
                                               top_p=top_p, stop_ids=stop_ids, generator=generator, prefill=prefill)
    gen_B_N = torch.stack(tokens, dim=1).cpu()
    is_eos_B_N = _is_stop(gen_B_N, stop_ids)
    # A token is kept up to and including the row's first EOS.
    gen_alive_B_N = (is_eos_B_N.long().cumsum(-1) - is_eos_B_N.long()) == 0
    gen_alive_B_N &= torch.arange(gen_B_N.shape[1])[None, :] < budget_B.cpu()[:, None]  # and within budget
    gen_logp_B_N = torch.stack(logprobs, dim=1).float().cpu() * gen_alive_B_N
    gen_lens_B = gen_alive_B_N.sum(-1)
    prompt_lens_B = torch.tensor(prompt_lens, dtype=torch.long)
    L = int((prompt_lens_B + gen_lens_B).max())

    # Row b's real tokens are one contiguous span of [left-padded prompt | generated]: from
    # P - prompt_len to P + gen_len. Shifting each row left by its prompt padding right-pads it.
    span_ids_B_S = torch.cat([ids_B_P.cpu(), gen_B_N], dim=1)
    span_logp_B_S = torch.cat([torch.zeros(B, P), gen_logp_B_N], dim=1)
    t_B_L = torch.arange(L)[None, :].expand(B, L)
    source_B_L = (t_B_L + (P - prompt_lens_B)[:, None]).clamp(max=span_ids_B_S.shape[1] - 1)
    attention_B_L = t_B_L < (prompt_lens_B + gen_lens_B)[:, None]
    completion_B_L = attention_B_L & (t_B_L >= prompt_lens_B[:, None])
    input_ids_B_L = span_ids_B_S.gather(1, source_B_L).masked_fill(~attention_B_L, pad_id)
    logprobs_B_L = span_logp_B_S.gather(1, source_B_L) * completion_B_L
    return SampleResult(
        input_ids_B_L=input_ids_B_L.to(device),
        attention_mask_B_L=attention_B_L.long().to(device),
        completion_mask_B_L=completion_B_L.long().to(device),
        logprobs_B_L=logprobs_B_L.to(device),
        prompt_lens_B=prompt_lens_B.to(device),
        truncated_B=~finished_B,
    )


def _is_stop(tokens: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """Bool, same shape: where ``tokens`` is one of ``stop_ids`` (one comparison for one id)."""
    if len(stop_ids) == 1:
        return tokens == stop_ids[0]
    return torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device))


def _decode(model, fast: Optional[fastpath.FastLlama], ids_B_P, mask_B_P, budget_B, uniforms_B_N, max_new_tokens: int,
            *, temperature: float, top_p: float, stop_ids: list[int], generator: Optional[torch.Generator], prefill=None):
    """The prefill and decode loop of ``sample`` (through ``fast`` when given, else the model's
    own forward): ``(tokens, logprobs, finished_B)``, one ``[B]`` tensor per generated position."""
    B, P = ids_B_P.shape
    device = ids_B_P.device
    if fast is not None:
        logits_B_V = (prefill or (lambda f, *a: f.prefill(*a)))(fast, ids_B_P, mask_B_P, _positions(mask_B_P), max_new_tokens)
    else:
        out = model(
            input_ids=ids_B_P,
            attention_mask=mask_B_P,
            position_ids=_positions(mask_B_P),
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are needed: no [B, P, V] tensor
        )
        cache = out.past_key_values
        logits_B_V = out.logits[:, -1]
    next_pos_B = mask_B_P.sum(-1)  # position id of the first generated token
    # Rows that finished keep decoding (cheaper than re-batching): whatever they write after
    # their EOS is dropped below, and rows never see each other, so every generated slot is
    # simply attended. One mask for the whole call; each step reads a prefix of it.
    full_mask_B_S = torch.cat([mask_B_P, torch.ones(B, max_new_tokens, dtype=torch.long, device=device)], dim=-1)
    if fast is not None:
        full_mask_B_S = fast.additive_mask(full_mask_B_S)  # [B, 1, 1, S]: no conversion per step

    tokens, logprobs = [], []
    finished_B = torch.zeros(B, dtype=torch.bool, device=device)
    # Per step, as few operations as possible (on small models each costs more than the maths):
    # which rows are still within budget at each step, and which are past it after each step.
    steps_N = torch.arange(max_new_tokens, device=device)
    within_N_B = (steps_N[:, None] < budget_B[None, :]).unbind(0)
    spent_N_B = (steps_N[:, None] + 1 >= budget_B[None, :]).unbind(0)
    for step in range(max_new_tokens):
        uniforms_B = uniforms_B_N[:, step] if uniforms_B_N is not None else None
        token_B, logprob_B = _pick(logits_B_V, temperature, top_p, generator, uniforms_B)
        tokens.append(token_B)
        logprobs.append(logprob_B)
        finished_B |= _is_stop(token_B, stop_ids) & within_N_B[step]  # an EOS past the row's budget does not count
        if bool((finished_B | spent_N_B[step]).all()):  # every row has its EOS or used its budget
            break
        mask_B_S = full_mask_B_S[..., :P + step + 1]
        if fast is not None:
            logits_B_V = fast.decode(token_B, mask_B_S, next_pos_B + step)
            continue
        out = model(
            input_ids=token_B[:, None],
            attention_mask=mask_B_S,
            position_ids=(next_pos_B + step)[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        logits_B_V = out.logits[:, -1]

    return tokens, logprobs, finished_B


def forward_logprobs(
    model,
    input_ids_B_L: torch.Tensor,
    attention_mask_B_L: torch.Tensor,
    temperature: float,
    *,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Log-prob of every token given its prefix, under ``softmax(logits / temperature)``.

    :param input_ids_B_L: token ids (right- or left-padded).
    :param attention_mask_B_L: 1 on real tokens.
    :param temperature: as in ``sample`` (0 is read as 1).
    :param chunk_size: None computes the model's own logits ([B, L, V] at once); an int computes
        ``final_hidden @ lm_head.T`` over that many positions at a time instead, for large
        vocabularies (exact for models whose logits are a plain lm-head projection, e.g. Llama).
    :return: ``logprobs_B_L`` (float32); position 0 and padding are 0.

    Runs with gradients if the caller has them enabled (wrap in ``torch.no_grad()`` to score).
    """
    t = temperature if temperature > 0 else 1.0
    targets_B_L1 = input_ids_B_L[:, 1:]
    if chunk_size is None:
        fast = fastpath.fast_forward(model)  # only without gradients
        if fast is not None:
            logits_B_L_V = fast.logits(fast.hidden(input_ids_B_L, attention_mask_B_L, _positions(attention_mask_B_L)))
        else:
            logits_B_L_V = model(
                input_ids=input_ids_B_L,
                attention_mask=attention_mask_B_L,
                position_ids=_positions(attention_mask_B_L),
                use_cache=False,
            ).logits
        logp_B_L1_V = torch.log_softmax(logits_B_L_V[:, :-1].float() / t, dim=-1)
        token_logp_B_L1 = logp_B_L1_V.gather(-1, targets_B_L1[..., None]).squeeze(-1)
    else:
        # final_hidden is already shifted: row t predicts token t.
        hidden_B_L_H = final_hidden(model, input_ids_B_L, attention_mask_B_L)[:, 1:]
        weight_V_H = lm_head_weight(model)
        parts = []
        for start in range(0, hidden_B_L_H.shape[1], chunk_size):
            h_B_C_H = hidden_B_L_H[:, start:start + chunk_size]
            logits_B_C_V = (h_B_C_H @ weight_V_H.T).float() / t
            tgt_B_C = targets_B_L1[:, start:start + chunk_size]
            parts.append(
                logits_B_C_V.gather(-1, tgt_B_C[..., None]).squeeze(-1)
                - torch.logsumexp(logits_B_C_V, dim=-1)
            )
        token_logp_B_L1 = torch.cat(parts, dim=1)
    token_logp_B_L1 = token_logp_B_L1 * attention_mask_B_L[:, 1:].to(token_logp_B_L1.dtype)
    zeros_B_1 = torch.zeros_like(token_logp_B_L1[:, :1])
    return torch.cat([zeros_B_1, token_logp_B_L1], dim=1)


def final_hidden(model, input_ids_B_L: torch.Tensor, attention_mask_B_L: torch.Tensor,
                 needed_B_L: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Final-layer hidden states (after the last norm), shifted so that row t predicts token t.

    ``final_hidden(...)[:, t] @ lm_head_weight(model).T`` equals the model's logits at position
    ``t - 1``; row 0 is zeros (nothing predicts the first token). No [B, L, V] logits are made
    (``logits_to_keep=1``). Gradients flow when enabled (the student's forward uses this).

    :param needed_B_L: the rows the caller reads (a loss mask), None: all. The lean forward skips the
        last layer's output projection and MLP elsewhere (zeros there). :return: ``hidden_B_L_H``.
    """
    positions_B_L = _positions(attention_mask_B_L)
    keep_B_L = None if needed_B_L is None else F.pad(needed_B_L[:, 1:].bool(), (0, 1))  # row t: position t - 1
    fast = fastpath.fast_forward(model)  # only without gradients
    if fast is not None:
        with torch.inference_mode():  # see sample(); the cat below makes an ordinary tensor of it
            hidden_B_L_H = fast.hidden(input_ids_B_L, attention_mask_B_L, positions_B_L, keep_B_L)
    else:
        hidden_B_L_H = None
        if torch.is_grad_enabled():  # the training forward: lean where the model allows it
            hidden_B_L_H = fastpath.training_hidden(model, input_ids_B_L, attention_mask_B_L, positions_B_L, keep_B_L)
    if hidden_B_L_H is None:
        out = model(
            input_ids=input_ids_B_L,
            attention_mask=attention_mask_B_L,
            position_ids=positions_B_L,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        # In transformers' causal LMs the last entry of hidden_states is the final norm's output.
        hidden_B_L_H = out.hidden_states[-1]
    zeros_B_1_H = torch.zeros_like(hidden_B_L_H[:, :1])
    return torch.cat([zeros_B_1_H, hidden_B_L_H[:, :-1]], dim=1)


def lm_head_weight(model) -> torch.Tensor:
    """The output projection weight ``[V, H]`` of ``model``, through DDP / accelerate / peft wrappers."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):
        inner = inner.module  # DistributedDataParallel, accelerate's wrappers
    head = inner.get_output_embeddings()  # peft forwards this to the wrapped transformers model
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings (lm-head)")
    weight = head.weight
    base = getattr(head, "base_layer", None)  # a peft-wrapped lm-head keeps the weight here
    if weight is None and base is not None:
        weight = base.weight
    return weight
