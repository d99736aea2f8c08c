"""The rollout's prompt prefill, reused as the prompt part of the student's training forward.

Why: in on-policy distillation the student samples with the weights it then trains, within one
step. Its training forward would run every prompt token through the decoder again, with
gradients, only to remake the keys and values the sampler's prefill already made (~85% of a
few-shot chat row's tokens). Here the sampler's prefill runs once, WITH gradients: its keys,
values and last hidden state are kept (``PrefillGraph``), the decoder samples from detached
copies, and the training forward runs on the completion tokens only, attending to the kept
keys and values. The backward flows through both. Values and gradients equal the full forward's
to float round-off (tests).

Used only where that is exact and cheap: the lean fast path of a plain Llama (no peft, no
gradient checkpointing, no wrapper: one process), and asked for by the caller (the training
loop's on-policy sampler with one micro-batch per step, so no graph waits for a later
backward). A batch that is not the sampled one (filtered, merged, copied) finds no graph and
takes the full forward. ``OPDPLUG_DISABLE_PREFILL_REUSE=1`` turns it off.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import fastpath
from .kvwriters import ContiguousKV

PROMPT_SHARE = 0.5
"""Reuse only where the prompts hold at least this share of the batch's prompt + completion-budget
tokens: the saving is the prompt's forward, the cost a second differentiable weight set-up and the
graph's bookkeeping per step. Measured on 1 CPU thread: the realistic vs_trl size (prompts ~130
tokens, 24 new) 1.49x -> 1.54x GKD's step; the tiny one (prompts shorter than the 27 new) 2.29x -> 2.13x."""

_GRAPHS: dict[int, tuple] = {}
"""id(input_ids tensor) -> (weak reference to it, its graph); the entry goes when the tensor does."""


@dataclass
class PrefillGraph:
    """A prompt prefill recorded with gradients to the student's parameters."""

    keys: list
    """Per layer, the rotated keys ``[B, P, G, D]`` of the left-padded prompts (with gradients)."""
    values: list
    """Per layer, the values ``[B, P, G, D]`` (with gradients)."""
    last_hidden_B_H: torch.Tensor
    """Final normed hidden state at each prompt's last token: it predicts the first completion token."""
    prompt_mask_B_P: torch.Tensor
    """1 on each left-padded prompt's tokens."""


class _RecordingKV:
    """Writes detached keys and values into the sampler's cache and keeps the originals."""

    def __init__(self, cache: ContiguousKV, graph_kv: tuple[list, list]):
        self.cache, (self.keys, self.values) = cache, graph_kv

    def write(self, layer: int, k_B_L_G_D: torch.Tensor, v_B_L_G_D: torch.Tensor):
        self.cache.write(layer, k_B_L_G_D.detach(), v_B_L_G_D.detach())
        self.keys.append(k_B_L_G_D)
        self.values.append(v_B_L_G_D)
        return k_B_L_G_D, v_B_L_G_D


class _ExtendKV:
    """The kept prompt keys and values, then the call's own: ``[B, P + C, G, D]`` per layer."""

    def __init__(self, graph: PrefillGraph):
        self.graph = graph

    def write(self, layer: int, k_B_C_G_D: torch.Tensor, v_B_C_G_D: torch.Tensor):
        return (torch.cat([self.graph.keys[layer], k_B_C_G_D], dim=1),
                torch.cat([self.graph.values[layer], v_B_C_G_D], dim=1))


def eligible(model, prompt_tokens: int, budget_tokens: int) -> bool:
    """Whether ``model``'s training forward can start from a recorded prefill (see the module doc)
    and it pays for these prompt and completion-budget token counts (``PROMPT_SHARE``)."""
    if os.environ.get("OPDPLUG_DISABLE_PREFILL_REUSE") == "1" or fastpath.unsupported_reason(model) is not None:
        return False
    if prompt_tokens < PROMPT_SHARE * (prompt_tokens + budget_tokens):
        return False
    inner = fastpath.unwrap(model)
    checkpointed = any(layer.__dict__.get("gradient_checkpointing", False) for layer in inner.model.layers)
    trainable = any(p.requires_grad for p in inner.parameters())  # a frozen model's sampler may use another layout
    return model is inner and trainable and "forward" not in inner.__dict__ and not checkpointed


def recorder(model, graphs: list):
    """A ``prefill`` for ``sampling.sample``: the prompt's forward with gradients, its keys and
    values written detached into the sampler's cache (``fast.cache``) and kept in a
    ``PrefillGraph`` appended to ``graphs``. Returns the last positions' logits, detached."""

    def prefill(fast, ids_B_P, mask_B_P, positions_B_P, max_new_tokens: int) -> torch.Tensor:
        B, P = ids_B_P.shape
        with torch.inference_mode(False), torch.enable_grad():
            positions_B_P = positions_B_P.clone()  # made in inference mode: an index the backward keeps
            live = fastpath.FastLlama(model, differentiable=True)  # the layout ``fast`` uses: same rows, same rotary
            cache = ContiguousKV(len(live.layers), B, P + max_new_tokens, live.n_kv_heads, live.head_dim,
                                 dtype=live.dtype, device=live.device)
            live.rope_tables(int(positions_B_P.max()) + max_new_tokens + 1)
            keys, values = [], []
            x = F.embedding(ids_B_P, live.embed_V_H)
            last_K = torch.arange(B, device=live.device) * P + (P - 1)  # prompts are left-padded
            h, _ = live.forward_layers(x, positions_B_P, live._prefix_mask(mask_B_P), _RecordingKV(cache, (keys, values)),
                                       keep_K=last_K)
            last_B_H = h[:, -1]
            graphs.append(PrefillGraph(keys, values, last_B_H, mask_B_P))
            with torch.no_grad():
                logits_B_V = live.logits(last_B_H.detach())
        fast.cache = cache
        fast.rope_tables(int(positions_B_P.max()) + max_new_tokens + 1)
        return logits_B_V

    return prefill


def keep(input_ids_B_L: torch.Tensor, graph: PrefillGraph) -> None:
    """Remember ``graph`` for the batch whose ids tensor is ``input_ids_B_L`` (while it lives)."""
    key = id(input_ids_B_L)
    _GRAPHS[key] = (weakref.ref(input_ids_B_L, lambda _ref: _GRAPHS.pop(key, None)), graph)


def take(input_ids_B_L: torch.Tensor) -> Optional[PrefillGraph]:
    """The graph kept for exactly this ids tensor, once (a second forward takes the full path)."""
    entry = _GRAPHS.get(id(input_ids_B_L))
    if entry is None or entry[0]() is not input_ids_B_L:
        return None
    del _GRAPHS[id(input_ids_B_L)]
    return entry[1]


def completion_hidden(model, graph: PrefillGraph, input_ids_B_L: torch.Tensor, attention_mask_B_L: torch.Tensor,
                      prompt_lens_B: torch.Tensor) -> torch.Tensor:
    """``sampling.final_hidden``'s shifted ``[B, L, H]`` on the completion rows of a right-padded
    prompt + completion batch (zeros elsewhere), from ``graph`` and a forward of the completion
    tokens only. Row ``p_b + j`` (completion token j) is predicted by the prompt's last hidden
    state for j = 0, and by completion token j - 1's for j >= 1."""
    live = fastpath.FastLlama(model, differentiable=True)
    device = live.device
    B, L = input_ids_B_L.shape
    P = graph.prompt_mask_B_P.shape[1]
    lens_B = attention_mask_B_L.sum(-1) - prompt_lens_B  # completion tokens per row
    C = max(int(lens_B.max()), 1)
    j_C = torch.arange(C, device=device)
    cols_B_C = (prompt_lens_B[:, None] + j_C[None, :]).clamp(max=L - 1)
    ids_B_C = input_ids_B_L.gather(1, cols_B_C)
    positions_B_C = prompt_lens_B[:, None] + j_C[None, :]  # the prompt held positions 0 .. p_b - 1
    live.rope_tables(int(positions_B_C.max()) + 1)
    causal_C_C = torch.ones(C, C, dtype=torch.bool, device=device).tril()
    mask = torch.cat([graph.prompt_mask_B_P.bool()[:, None, :].expand(B, C, P), causal_C_C[None].expand(B, C, C)], dim=-1)
    h_B_C_H, _ = live.forward_layers(F.embedding(ids_B_C, live.embed_V_H), positions_B_C, mask[:, None], _ExtendKV(graph))
    H = h_B_C_H.shape[-1]
    used_B_C = j_C[None, :] + 1 < lens_B[:, None]  # token j's output predicts token j + 1
    rows_B = torch.arange(B, device=device)
    into = torch.cat([rows_B * L + prompt_lens_B, (rows_B[:, None] * L + cols_B_C + 1)[used_B_C]])
    src = torch.cat([graph.last_hidden_B_H, h_B_C_H[used_B_C]])
    return src.new_zeros(B * L, H).index_copy(0, into, src).view(B, L, H)
