"""The per-layer weight layout of ``fastpath.FastLlama``: fused (q/k/v and gate/up concatenated,
norms folded, rows permuted for the complex rotary: copies, built per snapshot) or unfused (the
module's own tensors as tuples: no copy, for a frozen model too large to copy every call), and the
matrix product that takes either. Kept apart so ``fastpath`` stays one readable kernel."""
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
