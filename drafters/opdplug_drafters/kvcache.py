"""Multi-token forward passes over a KV cache with per-row lengths and rollback.

Speculative decoding feeds a model several tokens per row at once (the target verifies ``k + 1``
positions; a drafter catches up on the tokens accepted since its last call), rows advance by
different amounts, and rejected positions must leave the cache. Both classes here keep one
cache of ``[B, S, heads, D]`` per layer in which slot ``s`` of row ``b`` holds position ``s``
(so no left padding and no position bookkeeping): row ``b`` has ``lengths_B[b]`` valid slots,
``extend`` writes each row's new tokens right after them, and ``crop`` rolls a row back by
lowering its length (the stale slots are masked out, then overwritten).

* ``RaggedLlama``: the lean no-grad Llama forward of ``opdplug_local.fastpath`` (its public
  layer kernel ``FastLlama.forward_layers``: same weights snapshot, same fused projections,
  same arithmetic as the sampler) writing into ``RaggedKV``, a ``fastpath.KVWriter`` with
  per-row cache slots, and, on request, returning the hidden states entering given layers
  (EAGLE-3 features).
* ``RaggedRecompute``: any Hugging Face causal LM through its own forward, recomputing the
  whole sequence on every call. Slow but independent of the fast path: the reference the tests
  compare with, and the fallback for models the fast path does not support.

``ragged_forward(model)`` picks one. Everything runs under ``torch.no_grad``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from opdplug_local import fastpath

CAPACITY_STEP = 64
"""Slots added at a time when a cache has to grow (growing copies the cache)."""


def _check_layers(layers: Optional[Sequence[int]], n_layers: int) -> tuple[int, ...]:
    """Layer ids as a tuple, each in ``0 .. n_layers`` (``n_layers``: after the final norm)."""
    if layers is None:
        return ()
    out = tuple(int(i) for i in layers)
    bad = [i for i in out if not 0 <= i <= n_layers]
    if bad:
        raise ValueError(f"feature layer {bad[0]} is outside 0..{n_layers} (the target has {n_layers} layers)")
    return out


class RaggedKV:
    """A ``fastpath.KVWriter`` with one slot per row and position: ``[B, capacity, G, D]`` per
    layer; a call writes row ``b``'s token ``j`` at slot ``positions_B_L[b, j]`` and attends slots
    ``0 .. S - 1`` (its mask hides, per query, the slots after its own position)."""

    def __init__(self, n_layers: int, batch_size: int, capacity: int, n_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch_size, capacity, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.rows_B_L: Optional[torch.Tensor] = None
        """Set before each call: the row of every input token, ``[B, L]``."""
        self.positions_B_L: Optional[torch.Tensor] = None
        """Set before each call: the slot (= position) of every input token."""
        self.S = 0
        """Set before each call: the slots any query of the call can see."""

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1] if self.k else 0

    def grow(self, capacity: int) -> None:
        """Room for ``capacity`` positions per row (growing copies the cache)."""
        grow = lambda c: torch.cat([c, c.new_zeros(c.shape[0], capacity - c.shape[1], *c.shape[2:])], dim=1)  # noqa: E731
        self.k = [grow(c) for c in self.k]
        self.v = [grow(c) for c in self.v]

    def write(self, layer: int, k_B_L_G_D: torch.Tensor, v_B_L_G_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_cache, v_cache = self.k[layer], self.v[layer]
        k_cache.index_put_((self.rows_B_L, self.positions_B_L), k_B_L_G_D)
        v_cache.index_put_((self.rows_B_L, self.positions_B_L), v_B_L_G_D)
        return k_cache.narrow(1, 0, self.S), v_cache.narrow(1, 0, self.S)


class RaggedLlama:
    """The lean forward of ``fastpath.FastLlama`` (its public layer kernel, ``forward_layers``)
    over a ``RaggedKV`` cache: multi-token extend, crop (rollback), capture.

    :param model: a ``LlamaForCausalLM`` the fast path supports (``fastpath.unsupported_reason``
        is None); its current weights are snapshotted.
    :param capture_layers: layer ids whose INPUT hidden states ``extend`` returns, concatenated
        in this order (Hugging Face ``hidden_states[i]``: 0 = embeddings, ``i`` = output of layer
        ``i - 1``, ``num_layers`` = after the final norm). None: none.
    """

    def __init__(self, model: torch.nn.Module, capture_layers: Optional[Sequence[int]] = None):
        self.fast = fastpath.FastLlama(model)
        self.device, self.dtype = self.fast.device, self.fast.dtype
        self.n_layers = len(self.fast.layers)
        self.hidden_size = self.fast.embed_V_H.shape[1]
        self.vocab_size = self.fast.lm_head_V_H.shape[0]
        self.capture_layers = _check_layers(capture_layers, self.n_layers)
        self.lengths: list[int] = []
        """Cached positions per row (plain ints: no tensor reduction, no sync, per call)."""
        self.cache: Optional[RaggedKV] = None
        self._rows: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def capacity(self) -> int:
        return self.cache.capacity if self.cache is not None else 0

    @property
    def lengths_B(self) -> torch.Tensor:
        """Cached positions per row, as a tensor."""
        return torch.tensor(self.lengths, dtype=torch.long)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fast.logits(hidden)

    # ------------------------------------------------------------------------------ cache
    def start(self, batch_size: int, capacity: int) -> None:
        """Empty caches for ``batch_size`` rows of up to ``capacity`` positions each."""
        f = self.fast
        self.cache = RaggedKV(self.n_layers, batch_size, capacity, f.n_kv_heads, f.head_dim, dtype=f.dtype, device=f.device)
        self.lengths = [0] * batch_size
        self._tables(capacity)

    def _tables(self, capacity: int) -> None:
        """Rotary tables and the additive causal table for ``capacity`` positions: row ``p`` of
        ``causal_P_P`` is the mask of a query at position ``p`` (0 on slots ``<= p``, -inf after),
        so a step's whole mask is one gather (an additive mask is also the faster one for SDPA)."""
        self.fast.rope_tables(capacity)
        full = torch.full((capacity, capacity), float("-inf"), dtype=self.dtype, device=self.device)
        self.causal_P_P = full.triu(diagonal=1)

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new = needed + CAPACITY_STEP
        self.cache.grow(new)
        self._tables(new)

    def crop(self, lengths_B) -> None:
        """Roll rows back to ``lengths_B`` cached positions (each at most its current length)."""
        self.lengths = [int(n) for n in (lengths_B.tolist() if torch.is_tensor(lengths_B) else lengths_B)]

    # ------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def extend(self, ids_B_L: torch.Tensor, n_new_B) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Feed ``n_new_B[b]`` tokens to row ``b`` (``ids_B_L`` right-padded; the padding is
        computed but never becomes part of the cache) after its cached ones.

        Query ``j`` of row ``b`` attends slots ``0 .. positions_B_L[b, j]``: the row's cached
        prefix and its own new tokens up to itself (never an empty row, so padding is harmless).

        :return: ``hidden_B_L_H`` (final, normed; ``self.logits`` turns it into logits) and the
            captured ``aux_B_L_A`` (None without ``capture_layers``). Entries past a row's
            ``n_new`` are meaningless.
        """
        B, L = ids_B_L.shape
        S = max(self.lengths) + L  # slots any query of this call can see
        self._ensure_capacity(S)
        positions_B_L = torch.tensor(self.lengths, dtype=torch.long, device=self.device)[:, None] + self._arange(L)
        x_B_L_H = F.embedding(ids_B_L.to(self.device), self.fast.embed_V_H)
        cache = self.cache
        cache.rows_B_L, cache.positions_B_L, cache.S = self._row_index(B, L), positions_B_L, S
        mask_B_1_L_S = self.causal_P_P[positions_B_L, :S][:, None]
        hidden, aux = self.fast.forward_layers(x_B_L_H, positions_B_L, mask_B_1_L_S, cache, capture=self.capture_layers)
        n_new = n_new_B.tolist() if torch.is_tensor(n_new_B) else n_new_B
        self.lengths = [n + m for n, m in zip(self.lengths, n_new)]
        return hidden, aux

    def _arange(self, n: int) -> torch.Tensor:
        key = (0, n)
        if key not in self._rows:
            self._rows[key] = torch.arange(n, device=self.device)
        return self._rows[key]

    def _row_index(self, B: int, L: int) -> torch.Tensor:
        key = (B, L)
        if key not in self._rows:
            self._rows[key] = torch.arange(B, device=self.device)[:, None].expand(B, L)
        return self._rows[key]


class RaggedRecompute:
    """The same interface over any causal LM's own forward, recomputing every sequence in full.

    Keeps each row's tokens; ``extend`` runs the model on all of them (right-padded, with an
    attention mask) and returns the new positions' hidden states.
    """

    def __init__(self, model: torch.nn.Module, capture_layers: Optional[Sequence[int]] = None):
        self.model = model
        cfg = fastpath.unwrap(model).config
        self.n_layers = cfg.num_hidden_layers
        self.hidden_size = cfg.hidden_size
        self.capture_layers = _check_layers(capture_layers, self.n_layers)
        self.head = model.get_output_embeddings()
        self.vocab_size = self.head.weight.shape[0]
        self.device = self.head.weight.device
        self.tokens: list[list[int]] = []

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def lengths_B(self) -> torch.Tensor:
        return torch.tensor(self.lengths, dtype=torch.long)

    def start(self, batch_size: int, capacity: int) -> None:  # noqa: ARG002 - nothing to preallocate
        self.tokens = [[] for _ in range(batch_size)]

    def crop(self, lengths_B) -> None:
        lengths = lengths_B.tolist() if torch.is_tensor(lengths_B) else lengths_B
        self.tokens = [t[:int(n)] for t, n in zip(self.tokens, lengths)]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    @torch.no_grad()
    def extend(self, ids_B_L: torch.Tensor, n_new_B):
        B, L = ids_B_L.shape
        starts = self.lengths
        n_new = n_new_B.tolist() if torch.is_tensor(n_new_B) else list(n_new_B)
        for b, n in enumerate(n_new):
            self.tokens[b] = self.tokens[b] + ids_B_L[b, :n].tolist()
        full = max(len(t) for t in self.tokens)
        width = max(full, max(starts) + L)
        ids = torch.zeros(B, width, dtype=torch.long)
        mask = torch.zeros(B, width, dtype=torch.long)
        for b, t in enumerate(self.tokens):
            ids[b, :len(t)] = torch.tensor(t, dtype=torch.long)
            mask[b, :len(t)] = 1
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=torch.arange(width, device=self.device)[None].expand(B, -1),
                         use_cache=False, output_hidden_states=True)
        index_B_L = (torch.tensor(starts)[:, None] + torch.arange(L)).clamp(max=width - 1).to(self.device)
        take = lambda h: h.gather(1, index_B_L[..., None].expand(-1, -1, h.shape[-1]))  # noqa: E731
        hidden = take(out.hidden_states[-1])
        aux = None
        if self.capture_layers:
            aux = torch.cat([take(out.hidden_states[i]) for i in self.capture_layers], dim=-1)
        return hidden, aux


def ragged_forward(model: torch.nn.Module, capture_layers: Optional[Sequence[int]] = None):
    """A ``RaggedLlama`` when the fast path supports ``model``, else a ``RaggedRecompute``."""
    if fastpath.unsupported_reason(model) is None:
        return RaggedLlama(model, capture_layers)
    return RaggedRecompute(model, capture_layers)
