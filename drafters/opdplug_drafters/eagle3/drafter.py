"""``Eagle3Drafter``: an EAGLE-3 head behind the ``base.Drafter`` protocol.

Drafting mirrors SGLang's EAGLE-3 worker (chain drafting, top-k 1): for a row ``x_0 .. x_{n-1}``
with target features ``f_0 .. f_{n-2}``, the head first runs over the pairs ``(x_{s+1}, f_s)`` at
positions ``s = 0 .. n-2`` (SGLang's draft extend after a verify), whose output at ``s = n-2``
gives the first draft; draft ``j`` then feeds back draft ``j-1`` with the head's own previous
output at position ``n-2+j``, attending to those feature-based entries and to its chain. This is
what ``Eagle3Head.ttt_forward`` trains.

The feature-based keys and values are cached per row and reused while the next call's row
extends the cached tokens AND repeats the cached features exactly (else the cache is cropped to
the common part); chain entries are never cached. With or without the cache the maths are the
same; floating-point results agree to rounding.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .checkpoint import load_head
from .model import Eagle3Head


@dataclass
class _RowCache:
    """Feature-based entries of one row: index s holds the pair (x_{s+1}, f_s) at position s."""

    tokens: list
    """``x_0 .. x_m``: the row the ``m`` entries were computed from."""
    features_M_A: torch.Tensor
    """``f_0 .. f_{m-1}``, as given."""
    k_M_g_D: torch.Tensor
    """Rotated keys of the entries."""
    v_M_g_D: torch.Tensor
    """Values of the entries."""
    out_M_H: torch.Tensor
    """The head's (pre-norm) output at each entry: row ``m-1`` roots the next chain."""


class Eagle3Drafter:
    """Proposes ``k`` tokens per row from an ``Eagle3Head`` (see ``base.Drafter``)."""

    def __init__(self, head: Eagle3Head, *, use_cache: bool = True):
        self.head = head.eval()
        self.feature_layers = tuple(head.aux_layers)
        """HF hidden-state indices of the target the engine must pass as features (``base.Drafter``)."""
        self.use_cache = use_cache
        self._cache: dict[int, _RowCache] = {}
        self._draft_to_target_Vd = head.draft_to_target_Vd
        self.vocab_size = int(head.config.vocab_size)

    @classmethod
    def from_pretrained(
        cls, path: Union[str, os.PathLike], target: torch.nn.Module, *, use_cache: bool = True
    ) -> "Eagle3Drafter":
        """Load a head (a ``train_eagle3`` output directory, its ``head/`` or an exported
        directory) against ``target``, a loaded Hugging Face causal LM whose embedding it uses."""
        return cls(load_head(path, target), use_cache=use_cache)

    def reset(self) -> None:
        """Forget every row's cache."""
        self._cache.clear()

    # -------------------------------------------------------------------------------- cache
    def _entries(self, row: int, seq: list[int], feats_N_A: torch.Tensor) -> _RowCache:
        """The row's feature-based entries for all ``n - 1`` pairs, reusing what still holds."""
        head = self.head
        n = len(seq)
        cached = self._cache.get(row) if self.use_cache else None
        keep = 0
        if cached is not None:
            limit = min(len(cached.tokens) - 1, n - 1)
            while keep < limit and cached.tokens[keep + 1] == seq[keep + 1]:
                keep += 1
            # Features too: the same tokens with different features are different entries.
            same = (cached.features_M_A[:keep] == feats_N_A[:keep]).all(-1)
            if not bool(same.all()):
                keep = int(same.long().argmin())
        if cached is not None and keep == n - 1 and keep == cached.k_M_g_D.shape[0]:
            return cached
        k_old = cached.k_M_g_D[:keep] if cached is not None else None
        v_old = cached.v_M_g_D[:keep] if cached is not None else None
        out_old = cached.out_M_H[:keep] if cached is not None else None
        if keep < n - 1:
            tokens_1_N = torch.tensor(seq[keep + 1:n], dtype=torch.long, device=feats_N_A.device)[None]
            positions_1_N = torch.arange(keep, n - 1, device=feats_N_A.device)[None]
            hidden_1_N_H = head.fuse(feats_N_A[keep:n - 1][None])
            q, k, v = head.project(tokens_1_N, hidden_1_N_H, positions_1_N)
            if keep:
                k_all, v_all = torch.cat([k_old[None], k], dim=1), torch.cat([v_old[None], v], dim=1)
            else:
                k_all, v_all = k, v
            N, S = n - 1 - keep, n - 1
            mask_1_N_S = torch.ones(N, S, dtype=torch.bool, device=q.device).tril(diagonal=keep)[None]
            out_1_N_H = head.finish(head.attend(q, k_all, v_all, mask_1_N_S), hidden_1_N_H)
            out_new = out_1_N_H[0] if not keep else torch.cat([out_old, out_1_N_H[0]], dim=0)
            entry = _RowCache(list(seq), feats_N_A[:n - 1].clone(), k_all[0], v_all[0], out_new)
        else:  # the row got shorter: crop
            entry = _RowCache(list(seq), feats_N_A[:n - 1].clone(), k_old, v_old, out_old)
        if self.use_cache:
            self._cache[row] = entry
        return entry

    # -------------------------------------------------------------------------------- drafting
    def _draw(
        self, logits_B_Vd: torch.Tensor, temperature: float, generator: Optional[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft-vocabulary choice and the distribution it was drawn from, ``[B]`` and ``[B, Vd]``."""
        logits_B_Vd = logits_B_Vd.float()
        if temperature == 0:
            idx_B = logits_B_Vd.argmax(-1)
            probs_B_Vd = torch.nn.functional.one_hot(idx_B, logits_B_Vd.shape[-1]).float()
            return idx_B, probs_B_Vd
        probs_B_Vd = torch.softmax(logits_B_Vd / temperature, dim=-1)
        draw_device = generator.device if generator is not None else probs_B_Vd.device
        idx_B = torch.multinomial(probs_B_Vd.to(draw_device), 1, generator=generator).squeeze(-1).to(probs_B_Vd.device)
        return idx_B, probs_B_Vd

    @torch.no_grad()
    def propose(
        self,
        sequences: Sequence[Sequence[int]],
        features: Optional[Sequence[torch.Tensor]],
        k: int,
        *,
        temperature: float,
        generator: Optional[torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft ``k`` tokens after each row; probabilities over the TARGET vocabulary (the
        draft-vocabulary distribution scattered through ``d2t``, zero outside it)."""
        head = self.head
        device = head.fc.weight.device
        B, V = len(sequences), self.vocab_size
        if features is None or len(features) != B:
            raise ValueError("an EAGLE-3 drafter needs one feature tensor per row (target hidden states at feature_layers)")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if k <= 0:
            return torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0, V)
        A = head.fc.in_features
        rows = []
        for b, (seq, feats) in enumerate(zip(sequences, features)):
            seq = [int(t) for t in seq]
            if len(seq) < 2 or tuple(feats.shape) != (len(seq) - 1, A):
                raise ValueError(
                    f"row {b}: {len(seq)} tokens need features of shape ({len(seq) - 1}, {A}), got {tuple(feats.shape)}"
                )
            rows.append(self._entries(b, seq, feats.to(device, head.fc.weight.dtype)))
        lens_B = torch.tensor([r.k_M_g_D.shape[0] for r in rows], device=device)  # n - 1 per row
        draft_to_target = self._draft_to_target_Vd.to(device)
        ids, probs = [], []
        out_B_1_H = torch.stack([r.out_M_H[-1] for r in rows])[:, None]
        idx_B, p_B_Vd = self._draw(head.logits(out_B_1_H)[:, 0], temperature, generator)
        ids.append(idx_B)
        probs.append(p_B_Vd)
        if k > 1:
            M = int(lens_B.max())
            g, D = rows[0].k_M_g_D.shape[1:]
            k_cache = torch.zeros(B, M, g, D, dtype=out_B_1_H.dtype, device=device)
            v_cache = torch.zeros_like(k_cache)
            for b, r in enumerate(rows):
                k_cache[b, :r.k_M_g_D.shape[0]] = r.k_M_g_D
                v_cache[b, :r.v_M_g_D.shape[0]] = r.v_M_g_D
            cache_valid_B_M = torch.arange(M, device=device)[None] < lens_B[:, None]
            chain_k, chain_v = [], []
            for j in range(1, k):
                tokens_B_1 = draft_to_target[idx_B][:, None]
                positions_B_1 = (lens_B - 1 + j)[:, None]
                q, kj, vj = head.project(tokens_B_1, out_B_1_H, positions_B_1)
                chain_k.append(kj)
                chain_v.append(vj)
                keys = torch.cat([k_cache, *chain_k], dim=1)
                values = torch.cat([v_cache, *chain_v], dim=1)
                mask_B_1_S = torch.cat([cache_valid_B_M, torch.ones(B, j, dtype=torch.bool, device=device)], dim=1)[:, None]
                out_B_1_H = head.finish(head.attend(q, keys, values, mask_B_1_S), out_B_1_H)
                idx_B, p_B_Vd = self._draw(head.logits(out_B_1_H)[:, 0], temperature, generator)
                ids.append(idx_B)
                probs.append(p_B_Vd)
        draft_ids_B_K = draft_to_target[torch.stack(ids, dim=1)].cpu()
        probs_B_K_Vd = torch.stack(probs, dim=1).float().cpu()
        probs_B_K_V = torch.zeros(B, k, V, dtype=torch.float32)
        probs_B_K_V[..., draft_to_target.cpu()] = probs_B_K_Vd
        return draft_ids_B_K, probs_B_K_V
