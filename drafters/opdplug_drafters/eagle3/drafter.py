"""``Eagle3Drafter``: an EAGLE-3 head behind the ``base.Drafter`` protocol.

Drafting mirrors SGLang's EAGLE-3 worker (chain drafting, top-k 1): for a row ``x_0 .. x_{n-1}``
with target features ``f_0 .. f_{n-2}``, the head first runs over the pairs ``(x_{s+1}, f_s)`` at
positions ``s = 0 .. n-2`` (SGLang's draft extend after a verify), whose output at ``s = n-2``
gives the first draft; draft ``j`` then feeds back draft ``j-1`` with the head's own previous
output at position ``n-2+j``, attending to those feature-based entries and to its chain. This is
what ``Eagle3Head.ttt_forward`` trains.

The arithmetic is the head's own (``Eagle3Head.project/attend/finish/logits``), rearranged into
as few tensor operations per step as possible, because on a CPU a draft step of a small head
costs operator dispatch, not arithmetic, and speculative decoding only pays when a round of
``k`` draft steps costs well under a target forward:

* ``input_layernorm(embed(token))`` depends on the token alone: its contribution to the fused
  q/k/v projection is a table lookup (or one small matmul when the table would be large);
* q, k, v and the rotary "rotate half" of q and k come out of ONE matmul (rotating half a head
  is a signed permutation of the projection's rows), so rotary embedding is one ``addcmul``;
* output projections add into the residual (``addmm``); gate and up are one matmul;
* keys and values live in one preallocated cache per batch with slot = position (as
  ``kvcache.RaggedLlama``): the feature-based entries are committed, each chain step writes
  the slot right after the previous one, so a step's mask is one row of a causal table.

The feature-based entries are reused while the next call's row extends the cached tokens AND
repeats the cached features exactly (else the row is cropped to the common part); chain entries
are never committed. Results agree with the head's module-by-module computation to float
rounding (``tests/test_eagle3_drafter.py`` checks both against each other and against TTT).
The head's weights are snapshotted at the first proposal: build a new drafter to see updates.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .checkpoint import load_head
from .model import Eagle3Head

TABLE_LIMIT = 1 << 24
"""Largest token-contribution table (elements) precomputed; above it, one matmul per step."""
CAPACITY_STEP = 64
"""Cache slots added at a time when a row outgrows the cache."""


class _LeanHead:
    """A no-grad snapshot of an ``Eagle3Head`` laid out for few operations per draft step."""

    def __init__(self, head: Eagle3Head):
        att, mlp, layer = head.midlayer.self_attn, head.midlayer.mlp, head.midlayer
        h, g, D = att.num_heads, att.num_kv_heads, att.head_dim
        self.h, self.g, self.D = h, g, D
        H = head.config.hidden_size
        self.H = H
        self.dtype = head.fc.weight.dtype
        self.device = head.fc.weight.device
        self.eps = layer.input_layernorm.eps
        self.scaling = head.scaling
        self.rotary = head.rotary
        with torch.no_grad():
            wq, wk, wv = att.q_proj.weight, att.k_proj.weight, att.v_proj.weight
            # Rows giving rotate_half(q) and rotate_half(k): within each head, the second half's
            # rows negated, then the first half's.
            half = D // 2
            idx = torch.cat([torch.arange(half, D), torch.arange(0, half)])
            sign = torch.cat([-torch.ones(half), torch.ones(D - half)]).to(self.dtype)

            def rotated(w: torch.Tensor, heads: int) -> torch.Tensor:
                w = w.view(heads, D, -1)
                return (w[:, idx] * sign[None, :, None].to(w.device)).reshape(heads * D, -1)

            # Output layout: [q | k | rot(q) | rot(k) | v], heads of D.
            w_all = torch.cat([wq, wk, rotated(wq, h), rotated(wk, g), wv]).detach()
            self.w_tok_W_H = w_all[:, :H].contiguous()
            self.w_hid_W_H = w_all[:, H:].contiguous()
            embed_normed_V_H = layer.input_layernorm(head.embed_tokens.weight).detach()
            V, W = embed_normed_V_H.shape[0], w_all.shape[0]
            self.tok_table_V_W = embed_normed_V_H @ self.w_tok_W_H.t() if V * W <= TABLE_LIMIT else None
            self.embed_normed_V_H = embed_normed_V_H
            self.hidden_norm_H = layer.hidden_norm.weight.detach()
            self.fc_H_A = head.fc.weight.detach()
            self.norms = head.norms
            self.input_norm_A = head.input_norm.weight.detach() if head.norms.norm_before_fc else None
            self.fc_norm_n_H = torch.stack([n.weight for n in head.fc_norm]).detach() if head.norms.fc_norm else None
            self.o_H_I = att.o_proj.weight.detach()
            self.post_norm_H = layer.post_attention_layernorm.weight.detach()
            self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
            self.down = mlp.down_proj.weight.detach()
            self.final_norm_H = head.norm.weight.detach()
            self.lm_head_Vd_H = head.lm_head.weight.detach()
        self.cos_P_D = self.sin_P_D = None
        self.causal_P_P = None

    def norm(self, x: torch.Tensor, weight_H: torch.Tensor) -> torch.Tensor:
        # The head's RMSNorm: normalise in float32, scale in the weights' dtype (one op in float32).
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight_H, self.eps)
        return weight_H * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

    def tables(self, capacity: int) -> None:
        """Rotary and causal tables for positions ``0 .. capacity - 1``."""
        if self.causal_P_P is not None and self.causal_P_P.shape[0] >= capacity:
            return
        cos, sin = self.rotary(self.fc_H_A, torch.arange(capacity, device=self.device)[None])
        self.cos_P_D, self.sin_P_D = cos[0].to(self.dtype), sin[0].to(self.dtype)
        full = torch.full((capacity, capacity), float("-inf"), dtype=self.dtype, device=self.device)
        self.causal_P_P = full.triu(diagonal=1)  # row p: 0 on slots <= p

    def step(self, tokens_B_N: torch.Tensor, hidden_B_N_H: torch.Tensor, positions_B_N: torch.Tensor,
             k_cache: torch.Tensor, v_cache: torch.Tensor, rows_B_N: torch.Tensor, S: int) -> torch.Tensor:
        """The layer at ``positions`` (slot = position): writes the new keys/values into the
        caches ``[B, cap, g, D]``, attends slots ``<= position`` among the first ``S``, and
        returns the pre-norm output ``[B, N, H]``."""
        B, N, H = hidden_B_N_H.shape
        h, g, D = self.h, self.g, self.D
        x_M_H = hidden_B_N_H.reshape(B * N, H)
        tokens_M = tokens_B_N.reshape(B * N)
        if self.tok_table_V_W is not None:
            proj = torch.addmm(self.tok_table_V_W[tokens_M], self.norm(x_M_H, self.hidden_norm_H), self.w_hid_W_H.t())
        else:
            proj = torch.addmm(F.linear(self.embed_normed_V_H[tokens_M], self.w_tok_W_H),
                               self.norm(x_M_H, self.hidden_norm_H), self.w_hid_W_H.t())
        qk, qk_rot, v = proj.view(B, N, 2 * (h + g) + g, D).split([h + g, h + g, g], dim=2)
        cos, sin = self.cos_P_D[positions_B_N][:, :, None], self.sin_P_D[positions_B_N][:, :, None]
        q, k = torch.addcmul(qk * cos, qk_rot, sin).split([h, g], dim=2)
        k_cache.index_put_((rows_B_N, positions_B_N), k)
        v_cache.index_put_((rows_B_N, positions_B_N), v)
        mask_B_1_N_S = self.causal_P_P[positions_B_N, :S][:, None]
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k_cache[:, :S].transpose(1, 2), v_cache[:, :S].transpose(1, 2),
            attn_mask=mask_B_1_N_S, scale=self.scaling, enable_gqa=h != g,
        )
        x_M_H = torch.addmm(x_M_H, a.transpose(1, 2).reshape(B * N, h * D), self.o_H_I.t())
        gate, up = F.linear(self.norm(x_M_H, self.post_norm_H), self.gate_up).chunk(2, dim=-1)
        return torch.addmm(x_M_H, F.silu(gate) * up, self.down.t()).view(B, N, H)

    def logits(self, out_B_H: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits ``[B, Vd]`` (float32)."""
        return F.linear(self.norm(out_B_H, self.final_norm_H), self.lm_head_Vd_H).float()

    def fuse(self, feats_B_N_A: torch.Tensor) -> torch.Tensor:
        """``Eagle3Head.fuse``: the variant's feature norms, then ``fc``."""
        if self.input_norm_A is not None:
            feats_B_N_A = self.norm(feats_B_N_A, self.input_norm_A)
        if self.fc_norm_n_H is not None:
            parts = feats_B_N_A.unflatten(-1, (self.fc_norm_n_H.shape[0], -1))  # [B, N, n_aux, H]: each feature alone
            normed = F.rms_norm(parts.float(), (parts.shape[-1],), None, self.eps).to(parts.dtype)
            feats_B_N_A = (self.fc_norm_n_H * normed).flatten(-2)
        return F.linear(feats_B_N_A, self.fc_H_A)

    def carry(self, out_B_N_H: torch.Tensor) -> torch.Tensor:
        """``Eagle3Head.carry``: what a draft step hands to the next."""
        return self.norm(out_B_N_H, self.final_norm_H) if self.norms.norm_output else out_B_N_H


class Eagle3Drafter:
    """Proposes ``k`` tokens per row from an ``Eagle3Head`` (see ``base.Drafter``).

    :param head: the head (its weights are snapshotted at the first proposal).
    :param use_cache: keep each row's feature-based entries between calls (False: recompute
        every row from scratch on every call; same results, the reference the tests use).
    """

    def __init__(self, head: Eagle3Head, *, use_cache: bool = True):
        self.head = head.eval()
        self.feature_layers = tuple(head.aux_layers)
        """HF hidden-state indices of the target the engine must pass as features (``base.Drafter``)."""
        self.use_cache = use_cache
        self.vocab_size = int(head.config.vocab_size)
        self._lean: Optional[_LeanHead] = None
        self._draft_to_target_Vd = head.draft_to_target_Vd
        self.reset()

    @classmethod
    def from_pretrained(
        cls, path: Union[str, os.PathLike], target: torch.nn.Module, *, use_cache: bool = True
    ) -> "Eagle3Drafter":
        """Load a head (a ``train_eagle3`` output directory, its ``head/`` or an exported
        directory) against ``target``, a loaded Hugging Face causal LM whose embedding it uses."""
        return cls(load_head(path, target), use_cache=use_cache)

    def reset(self) -> None:
        """Forget every row's cache."""
        self._tokens: list[list[int]] = []  # per row: x_0 .. x_m behind the m committed entries
        self._lengths: list[int] = []  # per row: committed entries (slots 0 .. m-1)
        self._capacity = 0

    # -------------------------------------------------------------------------------- cache
    def _start(self, B: int, capacity: int, A: int) -> None:
        lean = self._lean
        shape = (B, capacity, lean.g, lean.D)
        self._k = torch.zeros(shape, dtype=lean.dtype, device=lean.device)
        self._v = torch.zeros(shape, dtype=lean.dtype, device=lean.device)
        self._out = torch.zeros(B, capacity, lean.H, dtype=lean.dtype, device=lean.device)
        self._feats = torch.zeros(B, capacity, A, dtype=lean.dtype, device=lean.device)
        self._tokens = [[] for _ in range(B)]
        self._lengths = [0] * B
        self._capacity = capacity
        lean.tables(capacity)

    def _grow(self, needed: int) -> None:
        new = needed + CAPACITY_STEP
        grow = lambda c: torch.cat([c, c.new_zeros(c.shape[0], new - c.shape[1], *c.shape[2:])], dim=1)  # noqa: E731
        self._k, self._v, self._out, self._feats = grow(self._k), grow(self._v), grow(self._out), grow(self._feats)
        self._capacity = new
        self._lean.tables(new)

    def _kept(self, b: int, seq: list[int], feats_N_A: torch.Tensor) -> int:
        """Committed entries of row ``b`` that still hold for ``seq`` and its features."""
        old, m = self._tokens[b], self._lengths[b]
        keep, limit = 0, min(m, len(seq) - 1)
        while keep < limit and old[keep + 1] == seq[keep + 1]:
            keep += 1
        # Same tokens with different features are different entries.
        if keep and not torch.equal(self._feats[b, :keep], feats_N_A[:keep]):
            same = (self._feats[b, :keep] == feats_N_A[:keep]).all(-1)
            keep = int(same.long().argmin())
        return keep

    # -------------------------------------------------------------------------------- drafting
    @staticmethod
    def _draw(logits_B_Vd: torch.Tensor, temperature: float, generator: Optional[torch.Generator]):
        """Draft-vocabulary choice ``[B]`` and, for T > 0, the distribution it came from ``[B, Vd]``."""
        if temperature == 0:
            return logits_B_Vd.argmax(-1), None
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
        B, V = len(sequences), self.vocab_size
        if features is None or len(features) != B:
            raise ValueError("an EAGLE-3 drafter needs one feature tensor per row (target hidden states at feature_layers)")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if k <= 0:
            return torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0, V)
        if self._lean is None:
            self._lean = _LeanHead(self.head)
        lean = self._lean
        A = lean.fc_H_A.shape[1]
        seqs = [[int(t) for t in s] for s in sequences]
        feats = []
        for b, (seq, f) in enumerate(zip(seqs, features)):
            if len(seq) < 2 or tuple(f.shape) != (len(seq) - 1, A):
                raise ValueError(
                    f"row {b}: {len(seq)} tokens need features of shape ({len(seq) - 1}, {A}), got {tuple(f.shape)}"
                )
            feats.append(f.to(lean.device, lean.dtype))
        longest = max(len(s) for s in seqs)
        if not self.use_cache or len(self._lengths) != B:
            self._start(B, longest + k + CAPACITY_STEP, A)
        elif longest + k > self._capacity:
            self._grow(longest + k)

        # Feature-based entries: commit each row's pairs (x_{s+1}, f_s) not cached yet.
        keep = [self._kept(b, seqs[b], feats[b]) for b in range(B)]
        n_new = [len(seqs[b]) - 1 - keep[b] for b in range(B)]
        width = max(n_new)
        if max(keep) + width > self._capacity:  # padding slots of a long cached row may reach past it
            self._grow(max(keep) + width)
        if width:
            tokens_B_N = torch.zeros(B, width, dtype=torch.long)
            feats_B_N_A = torch.zeros(B, width, A, dtype=lean.dtype, device=lean.device)
            for b in range(B):
                if n_new[b]:
                    tokens_B_N[b, :n_new[b]] = torch.tensor(seqs[b][keep[b] + 1:], dtype=torch.long)
                    feats_B_N_A[b, :n_new[b]] = feats[b][keep[b]:]
            tokens_B_N = tokens_B_N.to(lean.device)
            positions_B_N = torch.tensor(keep, device=lean.device)[:, None] + torch.arange(width, device=lean.device)
            rows_B_N = torch.arange(B, device=lean.device)[:, None].expand(B, width)
            # Padding slots (past a row's new entries) are written but never committed: a later
            # query only sees slots up to its own position, all written by then.
            hidden_B_N_H = lean.fuse(feats_B_N_A)
            S = max(keep) + width
            out_B_N_H = lean.step(tokens_B_N, hidden_B_N_H, positions_B_N, self._k, self._v, rows_B_N, S)
            self._out.index_put_((rows_B_N, positions_B_N), out_B_N_H)
            self._feats.index_put_((rows_B_N, positions_B_N), feats_B_N_A)
        for b in range(B):
            self._tokens[b] = seqs[b]
            self._lengths[b] = len(seqs[b]) - 1

        # The chain: draft 0 from the last entry's output, draft j from draft j - 1.
        last = [m - 1 for m in self._lengths]
        rows_B = torch.arange(B, device=lean.device)
        out_B_1_H = self._out[rows_B, torch.tensor(last, device=lean.device)][:, None]
        idx_B, p_B_Vd = self._draw(lean.logits(out_B_1_H[:, 0]), temperature, generator)
        ids, probs = [idx_B], [p_B_Vd]
        draft_to_target = self._draft_to_target_Vd.to(lean.device)
        rows_B_1 = rows_B[:, None]
        for j in range(1, k):
            positions_B_1 = torch.tensor(last, device=lean.device)[:, None] + j
            out_B_1_H = lean.step(draft_to_target[idx_B][:, None], lean.carry(out_B_1_H), positions_B_1, self._k, self._v, rows_B_1,
                                  max(last) + j + 1)
            idx_B, p_B_Vd = self._draw(lean.logits(out_B_1_H[:, 0]), temperature, generator)
            ids.append(idx_B)
            probs.append(p_B_Vd)
        draft_ids_B_K = draft_to_target[torch.stack(ids, dim=1)].cpu()
        if temperature == 0:
            return draft_ids_B_K, F.one_hot(draft_ids_B_K, V).float()
        probs_B_K_V = torch.zeros(B, k, V, dtype=torch.float32)
        probs_B_K_V[..., draft_to_target.cpu()] = torch.stack(probs, dim=1).float().cpu()
        return draft_ids_B_K, probs_B_K_V
