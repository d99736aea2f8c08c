"""Log-probs from hidden states and an output projection, a chunk of tokens at a time.

The largest tensor any function here creates is ``[chunk, V]``: with V = 152k and T = 4k a full
``[T, V]`` float32 logit tensor is 2.3 GiB, and its softmax and gradient as much again.
"""
from __future__ import annotations

import torch


def chunked_token_logprobs(
    hidden_N_H: torch.Tensor,
    lm_head_V_H: torch.Tensor,
    ids_N: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """log softmax(hidden @ W.T / temperature)[ids], without keeping ``[N, V]``.

    Differentiable (each chunk is recomputed in backward), float32 result ``[N]``.
    """
    out = []
    for start in range(0, hidden_N_H.shape[0], chunk_size):
        h = hidden_N_H[start : start + chunk_size]
        ids = ids_N[start : start + chunk_size]
        out.append(
            torch.utils.checkpoint.checkpoint(
                _token_logprobs_chunk, h, lm_head_V_H, ids, temperature, use_reentrant=False
            )
        )
    if not out:
        return hidden_N_H.new_zeros(0, dtype=torch.float32)
    return torch.cat(out)


def _token_logprobs_chunk(h_C_H, w_V_H, ids_C, temperature):
    logits_C_V = (h_C_H @ w_V_H.T).float() / temperature
    return logits_C_V.gather(-1, ids_C[:, None]).squeeze(-1) - torch.logsumexp(logits_C_V, dim=-1)


@torch.no_grad()
def chunked_topk(
    hidden_N_H: torch.Tensor,
    lm_head_V_H: torch.Tensor,
    k: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k ids ``[N, k]``, their log-probs ``[N, k]`` and the log of the mass outside them ``[N]``."""
    ids, logps = [], []
    for start in range(0, hidden_N_H.shape[0], chunk_size):
        logp_C_V = torch.log_softmax((hidden_N_H[start : start + chunk_size] @ lm_head_V_H.T).float() / temperature, -1)
        top = logp_C_V.topk(k, dim=-1)
        ids.append(top.indices)
        logps.append(top.values)
    if not ids:
        empty = hidden_N_H.new_zeros(0, k)
        return empty.long(), empty.float(), hidden_N_H.new_zeros(0).float()
    ids_N_K, logp_N_K = torch.cat(ids), torch.cat(logps)
    return ids_N_K, logp_N_K, log1mexp(torch.logsumexp(logp_N_K, -1))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends; clamps x to <= -1e-7 (mass 1 - 1e-7)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
