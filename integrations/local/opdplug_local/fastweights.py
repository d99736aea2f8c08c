"""The per-layer weight layout of ``fastpath.FastLlama``: fused (q/k/v and gate/up concatenated,
norms folded, rows permuted for the complex rotary: copies, built per snapshot) or unfused (the
module's own tensors as tuples, or as the one tensor ``share_storage`` made them share: no copy, for
a frozen model too large to copy every call), and the matrix product that takes either. Kept apart so ``fastpath`` stays one readable kernel."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LlamaLayerWeights:
    """One decoder layer's weights with q/k/v and gate/up concatenated, or as tuples of the module's
    own tensors when not fused (detached unless the ``FastLlama`` is differentiable). q/k rows are
    permuted for the complex rotary layout."""

    input_norm_H: Optional[torch.Tensor]  # None when folded into qkv_weight
    qkv_weight: torch.Tensor  # or (q, k, v) unfused
    qkv_bias: Optional[torch.Tensor]
    o_weight: torch.Tensor
    o_bias: Optional[torch.Tensor]
    post_norm_H: Optional[torch.Tensor]  # None when folded into gate_up_weight
    gate_up_weight: torch.Tensor  # or (gate, up) unfused
    gate_up_bias: Optional[torch.Tensor]
    down_weight: torch.Tensor
    down_bias: Optional[torch.Tensor]


def _cat_bias(*linears, keep=torch.Tensor.detach) -> Optional[torch.Tensor]:
    """The linears' biases concatenated (zeros for one without), or None when none has one."""
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat([keep(lin.bias) if lin.bias is not None else torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                                                 device=lin.weight.device) for lin in linears])


def _keep(keep, weight):
    """``keep`` (detach or not) on a fused weight; an unfused tuple is kept already."""
    return weight if isinstance(weight, tuple) else keep(weight)


def _linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear`` on a fused weight, or on an unfused one's parts (a tuple) with the outputs concatenated."""
    if not isinstance(weight, tuple):
        return F.linear(x, weight, bias)
    y = torch.cat([F.linear(x, part) for part in weight], dim=-1)
    return y if bias is None else y + bias


FUSED_ATTR = "_opdplug_fused_weight"


def share_storage(*linears: torch.nn.Linear) -> torch.Tensor:
    """Make the linears' weights consecutive row blocks of one new tensor, in place, and return it.

    Why: a frozen model too large to snapshot (``fastpath.SNAPSHOT_CACHE_BYTES``) runs its q/k/v
    (and gate/up) as separate products; with the weights stored as one tensor the fast path runs one
    product on it, with no copy and no second set of weights. The module's own forward is unchanged
    (each weight is still its ``[out, in]`` rows). Not for a model that is saved afterwards:
    safetensors refuses tensors that share memory."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start:start + rows]
        start += rows
    linears[0].__dict__[FUSED_ATTR] = fused  # a plain attribute: not in the state dict, not moved by .to()
    return fused


def shared_weight(*linears: torch.nn.Linear) -> Optional[torch.Tensor]:
    """The tensor ``share_storage`` made for these linears while their weights are still its rows
    (a later ``.to()``, ``load_state_dict`` with ``assign`` or replaced weight breaks that: None)."""
    fused = linears[0].__dict__.get(FUSED_ATTR)
    if fused is None:
        return None
    start = 0
    for lin in linears:
        w = lin.weight
        rows = w.shape[0]
        if (w.dtype != fused.dtype or w.shape[1:] != fused.shape[1:] or start + rows > fused.shape[0]
                or w.data_ptr() != fused[start].data_ptr() or not w.is_contiguous()):
            return None
        start += rows
    return fused if start == fused.shape[0] else None


def _own_weight(keep, differentiable: bool, *linears):
    """Unfused: the linears' weights as the one tensor they share (``share_storage``; frozen models
    only, since a detached view carries no gradient) or as a tuple of parts."""
    shared = None if differentiable else shared_weight(*linears)
    return keep(shared) if shared is not None else tuple(keep(x.weight) for x in linears)


def share_fused_weights(layers: torch.nn.ModuleList) -> bool:
    """Store FROZEN Llama decoder ``layers``' q/k/v and gate/up weights as one tensor each per layer,
    in place (``share_storage``: one product each, no copy; a frozen 88M teacher scoring 4 x 156
    tokens, 1 thread: 551 against 579 ms, identical results). For a model the fast path takes
    (``fastpath.unsupported_reason`` None) that is never trained or saved, a teacher; layers with a
    trainable parameter: False, nothing done."""
    if any(p.requires_grad for p in layers.parameters()):
        return False
    for layer in layers:
        for group in ((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj), (layer.mlp.gate_proj, layer.mlp.up_proj)):
            if shared_weight(*group) is None:
                share_storage(*group)
    return True
