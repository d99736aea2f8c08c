"""Where ``fastpath.FastLlama``'s layers put keys and values: the ``KVWriter`` protocol and the
sampler's ``ContiguousKV`` (another engine's writer: ``opdplug_drafters.kvcache.RaggedKV``)."""
from __future__ import annotations

from typing import Protocol

import torch


class KVWriter(Protocol):
    """Where a layer's keys and values go: ``write`` stores layer ``layer``'s rotated keys and values
    ``[B, L, G, D]`` of the call's tokens and returns the ``[B, S, G, D]`` ones its queries attend
    (slot ``s`` = column ``s`` of the call's mask)."""

    def write(self, layer: int, k_B_L_G_D: torch.Tensor, v_B_L_G_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class ContiguousKV:
    """The sampler's KV cache, ``[B, capacity, G, D]`` per layer: a call writes every row at slots
    ``start .. start + L - 1`` (one narrow + copy) and attends slots ``0 .. start + L - 1``."""

    def __init__(self, n_layers: int, batch_size: int, capacity: int, n_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch_size, capacity, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.start = 0

    def write(self, layer: int, k_B_L_G_D: torch.Tensor, v_B_L_G_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, L = self.start, k_B_L_G_D.shape[1]
        k_cache, v_cache = self.k[layer], self.v[layer]
        k_cache.narrow(1, start, L).copy_(k_B_L_G_D)
        v_cache.narrow(1, start, L).copy_(v_B_L_G_D)
        return k_cache.narrow(1, 0, start + L), v_cache.narrow(1, 0, start + L)
