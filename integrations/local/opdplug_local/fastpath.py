"""A lean forward pass for Llama-architecture models: sampling, scoring and training without overhead.

Why: on small models a transformers forward is mostly Python (module dispatch, mask building,
cache bookkeeping): a decode step of a 2-layer model spends far more time there than in
arithmetic. Sampling is the largest part of an OPD step, so the local backend runs the same
mathematics here with fused projections on small models (q/k/v in one matmul, gate/up in one, norm weights folded
in), a preallocated KV cache, one mask per step, and padding packed out of every per-token
product. Results equal the model's own forward to float round-off (tests compare logits, seeded
samples, and for ``training_hidden`` every parameter's gradient).

``fast_forward`` gives the no-grad forward (sampling, teacher scoring); ``training_hidden`` the
student's forward with gradients. Both are used only where exact and safe: a plain
``LlamaForCausalLM`` (under DDP / accelerate wrappers) whose projections are ordinary
``nn.Linear`` (no peft adapter, no quantised layer, no accelerate device-map hooks), a static
rotary embedding and no dropout in train mode. Anything else goes through ``model(...)``, so
correctness never depends on this file. ``OPDPLUG_DISABLE_FASTPATH=1`` forces ``model(...)`` everywhere.

The layer's mathematics exists once, public: ``FastLlama.layer`` and ``forward_layers`` (every
layer, then the final norm), writing keys and values through a ``KVWriter``: the sampler's
``ContiguousKV``, none (``hidden``), or another engine's (``opdplug_drafters.kvcache``).
"""
from __future__ import annotations

import copy
import os
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .fastweights import LlamaLayerWeights, _cat_bias, _keep, _linear  # noqa: F401  (LlamaLayerWeights: public)
from .kvwriters import ContiguousKV, KVWriter  # noqa: F401  (KVWriter: public, drafters write their own)

STATIC_ROPE_TYPES = ("default", "linear", "llama3")  # tables that do not depend on the sequence length
SNAPSHOT_CACHE_BYTES = 256 << 20
"""Models with at most this many bytes of parameters keep their fast-path snapshot between calls;
a frozen model over it is not fused at all (its forward reads the module's weights: no copy)."""
FUSE_PER_CALL_BYTES = 16 << 20
"""A trainable model (snapshotted, or its training forward built, every call) is fused only while
its decoder layers hold at most this many bytes: fusing copies them and, with gradients, keeps the
copies for a backward of weight-sized scatters. 1 thread: 36 MiB of layers (``vs_trl`` realistic)
unfused 482 ms against fused 628 for forward + backward; 10 MiB fused 140 against 152."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside (Distributed)DataParallel wrappers, whose forward only calls it. Other
    modules with a ``.module`` are NOT unwrapped: their forward may change the result (a logit bias)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def unsupported_reason(model: torch.nn.Module) -> Optional[str]:
    """Why ``model`` cannot take the fast path, or None when it can."""
    if os.environ.get("OPDPLUG_DISABLE_FASTPATH", "") not in ("", "0"):
        return "OPDPLUG_DISABLE_FASTPATH is set"
    inner = unwrap(model)
    if type(inner).__name__ != "LlamaForCausalLM":
        return f"{type(inner).__name__} is not LlamaForCausalLM"
    cfg = inner.config
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return "activation other than silu or pretraining_tp != 1"
    rope_type = getattr(inner.model.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r} depends on the sequence length"
    if inner.training and getattr(cfg, "attention_dropout", 0.0) > 0:
        return "attention dropout in train mode"
    for module in inner.modules():
        # Plain dict lookups: runs before every sampling call (hasattr would raise inside __getattr__).
        attrs = module.__dict__
        if "_hf_hook" in attrs or (
            (attrs["_forward_hooks"] or attrs["_forward_pre_hooks"])
            and any(not _is_passive(h) for h in [*attrs["_forward_hooks"].values(), *attrs["_forward_pre_hooks"].values()])
        ):
            return f"{type(module).__name__} has forward hooks"
        if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear:
            return f"{type(module).__name__} is not a plain nn.Linear (adapter or quantised layer)"
    return None


def _is_passive(hook) -> bool:
    """True for transformers' own output-capturing hooks: installed on the first forward with
    ``output_hidden_states``, they only record outputs when a capture is requested and change nothing."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing"


LayerCall = NamedTuple("LayerCall", [("B", int), ("L", int), ("rope", tuple), ("mask", torch.Tensor),
                                     ("kv", Optional[KVWriter]), ("rows_N", Optional[torch.Tensor])])
"""What the layers of one forward call share: ``rope`` (``(cis_B_L_1_D2,)`` or ``(cos, sin)``
``[B, L, 1, D]`` at the call's positions), ``mask`` ``[B, 1, L, S]`` (bool, True: attend; or
additive, 0 / -inf), ``kv`` (None: attend the call's own keys, ``S = L``), ``rows_N`` (flat
indices into ``B * L`` of the real tokens, when the residual holds only those)."""


class FastLlama:
    """The lean forward of one ``LlamaForCausalLM``'s current weights: build it once per sampling,
    scoring or training call (the fused weights are copies: a later optimizer step is not seen)."""

    def __init__(self, model: torch.nn.Module, *, differentiable: bool = False, fuse: Optional[bool] = None):
        """``differentiable``: keep the weights attached to the model's parameters (the
        concatenations then carry gradients back to them); by default they are detached.
        ``fuse``: concatenate q/k/v and gate/up, fold the norms, permute for the complex rotary;
        default: a frozen model unless its parameters exceed ``SNAPSHOT_CACHE_BYTES`` (a large
        teacher: the copy costs time every call and a second set of weights in memory); a trainable
        or differentiable one unless its decoder layers exceed ``FUSE_PER_CALL_BYTES``."""
        inner = unwrap(model)
        cfg = inner.config
        if fuse is None:
            fuse = _fuse_by_default(inner, differentiable)
        self.fused = fuse
        keep = (lambda t: t) if differentiable else (lambda t: t.detach())
        maybe = lambda t: None if t is None else keep(t)  # noqa: E731
        self.embed_V_H = keep(inner.model.embed_tokens.weight)
        self.device = self.embed_V_H.device
        self.final_norm_H = keep(inner.model.norm.weight)
        self.lm_head_V_H = keep(inner.lm_head.weight)
        self.lm_head_bias = None if inner.lm_head.bias is None else keep(inner.lm_head.bias)
        self.rotary = inner.model.rotary_emb
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.dtype = self.embed_V_H.dtype
        # Rotary embedding as one complex multiply (float32 only: no bfloat16 complex). transformers
        # pairs coordinate i with i + D/2 in each head; complex numbers need them adjacent: permuting
        # q_proj's and k_proj's rows alike in every head does that and leaves every q.k unchanged.
        self.complex_rope = fuse and self.dtype == torch.float32 and self.head_dim % 2 == 0
        # Norm weights folded into the next projections (float32 only: bfloat16 would round otherwise).
        self.fold_norms = fuse and self.dtype == torch.float32
        H = self.embed_V_H.shape[1]
        self._mean_H_1 = torch.full((H, 1), 1.0 / H, dtype=self.dtype, device=self.device)
        D = self.head_dim
        inner_perm = torch.arange(D).view(2, D // 2).t().reshape(-1) if self.complex_rope else torch.arange(D)
        q_rows = (torch.arange(self.n_heads)[:, None] * D + inner_perm).reshape(-1)
        k_rows = (torch.arange(self.n_kv_heads)[:, None] * D + inner_perm).reshape(-1)
        self.layers = []
        for layer in inner.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            qkv_bias = _cat_bias(att.q_proj, att.k_proj, att.v_proj, keep=keep)
            if qkv_bias is not None:
                nq, nk = self.n_heads * D, self.n_kv_heads * D
                qkv_bias = torch.cat([qkv_bias[:nq][q_rows.to(self.device)], qkv_bias[nq:nq + nk][k_rows.to(self.device)],
                                      qkv_bias[nq + nk:]])
            if fuse:
                q_w, k_w = att.q_proj.weight[q_rows.to(self.device)], att.k_proj.weight[k_rows.to(self.device)]
                qkv_w, gate_up_w = torch.cat([q_w, k_w, att.v_proj.weight]), torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            else:  # the module's own tensors, in parts (_linear); identity row order, norms not folded
                qkv_w = tuple(keep(x.weight) for x in (att.q_proj, att.k_proj, att.v_proj))
                gate_up_w = tuple(keep(x.weight) for x in (mlp.gate_proj, mlp.up_proj))
            input_norm, post_norm = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
            if self.fold_norms:  # (x_hat * w) @ W.T == x_hat @ (W * w).T: one multiply fewer per norm
                qkv_w, gate_up_w = qkv_w * input_norm, gate_up_w * post_norm
                input_norm = post_norm = None
            self.layers.append(LlamaLayerWeights(  # in field order
                maybe(input_norm), _keep(keep, qkv_w), qkv_bias, keep(att.o_proj.weight), maybe(att.o_proj.bias),
                maybe(post_norm), _keep(keep, gate_up_w), _cat_bias(mlp.gate_proj, mlp.up_proj, keep=keep),
                keep(mlp.down_proj.weight), maybe(mlp.down_proj.bias)))
        self.cache: Optional[ContiguousKV] = None  # the sampler's, made by prefill
        self.cos_P_D = self.sin_P_D = None

    # -------------------------------------------------------------------------------- pieces
    def _norm(self, x_N_H: torch.Tensor, weight_H: Optional[torch.Tensor]) -> torch.Tensor:
        """LlamaRMSNorm. ``weight_H`` None: the weight was folded into the next projection."""
        if x_N_H.dtype == torch.float32:
            # The mean square as a matrix product: on CPU a small reduction costs more than that.
            y = x_N_H * torch.matmul(x_N_H * x_N_H, self._mean_H_1).add_(self.eps).rsqrt_()
            return y if weight_H is None else y * weight_H
        # Other dtypes as LlamaRMSNorm does it: normalise in float32, scale in the model's dtype.
        y = F.rms_norm(x_N_H.float(), (x_N_H.shape[-1],), None, self.eps).to(x_N_H.dtype)
        return y if weight_H is None else weight_H * y

    def rope_tables(self, n_positions: int) -> None:
        """cos/sin for positions 0..n-1 from the model's own rotary module (any static rope type)."""
        if self.cos_P_D is not None and self.cos_P_D.shape[0] >= n_positions:
            return
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, torch.arange(n_positions, device=self.device)[None])
        self.cos_P_D, self.sin_P_D = cos[0], sin[0]
        if self.complex_rope:  # the table repeats its first half: one complex factor per pair
            half = self.head_dim // 2
            self.cis_P_D2 = torch.complex(self.cos_P_D[:, :half].float(), self.sin_P_D[:, :half].float())

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x * cos + rotate_half(x) * sin`` with two in-place multiply-adds: no negated copy, no cat."""
        half = x.shape[-1] // 2
        out = x * cos
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        return out

    def layer(self, index: int, x_N_H: torch.Tensor, call: LayerCall, keep_K: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decoder layer ``index`` on the residual stream ``x_N_H`` -> ``[N, H]``, 2-D so the output
        projections add into it (addmm): ``N = B * L`` rows, or the real tokens' only with
        ``call.rows_N`` (attention alone then runs on ``[B, L]``, between a scatter and a gather).
        ``keep_K``: rows of ``x_N_H`` whose output is wanted; every row still gives its key and value,
        but the output projection and the MLP run on these only (-> ``[K, H]``).
        Few, cheap operations: on small models each costs more in dispatch than in arithmetic."""
        w = self.layers[index]
        B, L, rope, mask, kv, rows_N = call
        Hq, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv_N_C = _linear(self._norm(x_N_H, w.input_norm_H), w.qkv_weight, w.qkv_bias)
        if rows_N is not None:
            qkv_N_C = qkv_N_C.new_zeros(B * L, qkv_N_C.shape[-1]).index_copy(0, rows_N, qkv_N_C)
        qk, v = qkv_N_C.view(B, L, Hq + 2 * Hkv, D).split([Hq + Hkv, Hkv], dim=2)
        if self.complex_rope:  # queries and keys rotated together
            qk = torch.view_as_real(torch.view_as_complex(qk.unflatten(-1, (D // 2, 2))) * rope[0]).flatten(-2)
        else:
            qk = self._rotate(qk, *rope)
        q, k = qk.split([Hq, Hkv], dim=2)
        if kv is not None:
            k, v = kv.write(index, k, v)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, scale=self.scaling, enable_gqa=Hq != Hkv)
        a_N_A = a.transpose(1, 2).reshape(B * L, Hq * D)
        if rows_N is not None:
            a_N_A = a_N_A.index_select(0, rows_N)
        if keep_K is not None:
            x_N_H, a_N_A = x_N_H.index_select(0, keep_K), a_N_A.index_select(0, keep_K)
        x_N_H = self._project_add(x_N_H, a_N_A, w.o_weight, w.o_bias)
        gate, up = _linear(self._norm(x_N_H, w.post_norm_H), w.gate_up_weight, w.gate_up_bias).chunk(2, dim=-1)
        return self._project_add(x_N_H, F.silu(gate) * up, w.down_weight, w.down_bias)

    def forward_layers(self, x_B_L_H: torch.Tensor, positions_B_L: torch.Tensor, mask: torch.Tensor,
                       kv: Optional[KVWriter] = None, *, rows_N: Optional[torch.Tensor] = None,
                       keep_K: Optional[torch.Tensor] = None, capture: tuple = ()) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Every ``layer`` on the embedded tokens (``[N, H]`` with ``rows_N``), then the final norm:
        ``(hidden_B_L_H, aux_B_L_A)``. ``positions_B_L`` within ``rope_tables``; ``mask``, ``kv``,
        ``rows_N``: see ``LayerCall`` (no query may attend nothing). ``keep_K``: the residual rows
        whose hidden state the caller reads; the last layer's output projection and MLP run on those
        only and the other rows come back as zeros (why: a teacher scores, and a student trains on,
        the completion only, ~15% of a chat turn's tokens). ``aux`` concatenates the INPUT
        hidden states of the layer ids ``capture`` (HF ``hidden_states[i]``; ``len(self.layers)``:
        the final normed output; not with ``rows_N`` or ``keep_K``), None without."""
        B, L = positions_B_L.shape
        H = x_B_L_H.shape[-1]
        if self.complex_rope:  # one table for all heads
            rope = (self.cis_P_D2[positions_B_L][:, :, None],)
        else:
            rope = self.cos_P_D[positions_B_L][:, :, None], self.sin_P_D[positions_B_L][:, :, None]
        call = LayerCall(B, L, rope, mask, kv, rows_N)
        captured = {} if capture else None
        x_N_H = x_B_L_H.reshape(-1, H)
        layer, last = self.layer, len(self.layers) - 1
        for i in range(len(self.layers)):
            if capture and i in capture:
                captured[i] = x_N_H
            x_N_H = layer(i, x_N_H, call, keep_K if i == last else None)
        h_N_H = self._norm(x_N_H, self.final_norm_H)
        if keep_K is not None:  # back to every row (one scatter, into [B * L] rows with rows_N)
            into = keep_K if rows_N is None else rows_N.index_select(0, keep_K)
            return h_N_H.new_zeros(B * L, H).index_copy(0, into, h_N_H).view(B, L, H), None
        aux = None
        if capture:
            captured[len(self.layers)] = h_N_H
            aux = torch.cat([captured[i] for i in capture], dim=-1).view(B, L, -1)
        if rows_N is not None:
            h_N_H = h_N_H.new_zeros(B * L, H).index_copy(0, rows_N, h_N_H)
        return h_N_H.view(B, L, H), aux

    @staticmethod
    def _project_add(x_N_H: torch.Tensor, a_N_I: torch.Tensor, weight_H_I: torch.Tensor,
                     bias_H: Optional[torch.Tensor]) -> torch.Tensor:
        """``x + a @ weight.T (+ bias)``: one addmm when there is no bias."""
        if bias_H is None:
            return torch.addmm(x_N_H, a_N_I, weight_H_I.t())
        return x_N_H + F.linear(a_N_I, weight_H_I, bias_H)

    def logits(self, hidden_B_L_H: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_B_L_H, self.lm_head_V_H, self.lm_head_bias)

    @staticmethod
    def _prefix_mask(attention_mask_B_L: torch.Tensor) -> torch.Tensor:
        """Causal and padding mask ``[B, 1, L, L]``. Each position also sees itself, so a padding
        query never has an empty row (an all-masked row would give NaN that reaches the cache)."""
        L = attention_mask_B_L.shape[1]
        causal_L_L = torch.ones(L, L, dtype=torch.bool, device=attention_mask_B_L.device).tril()
        mask = causal_L_L[None] & attention_mask_B_L.bool()[:, None, :]
        return (mask | torch.eye(L, dtype=torch.bool, device=mask.device)[None])[:, None]

    # -------------------------------------------------------------------------------- entry points
    @torch.no_grad()
    def hidden(self, input_ids_B_L: torch.Tensor, attention_mask_B_L: torch.Tensor,
               position_ids_B_L: torch.Tensor, keep_B_L: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final normed hidden states ``[B, L, H]`` of a whole sequence (no cache); with ``keep_B_L``
        (bool) only at those positions, zeros elsewhere (see ``forward_layers``)."""
        return self.hidden_with_grad(input_ids_B_L, attention_mask_B_L, position_ids_B_L, keep_B_L)

    def hidden_with_grad(self, input_ids_B_L: torch.Tensor, attention_mask_B_L: torch.Tensor,
                         position_ids_B_L: torch.Tensor, keep_B_L: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``hidden`` under the caller's grad mode: with a differentiable ``FastLlama`` and
        gradients enabled, a training forward (see ``training_hidden``)."""
        with torch.no_grad():  # the rotary tables are constants
            self.rope_tables(int(position_ids_B_L.max()) + 1)
        rows_N = None
        if not bool(attention_mask_B_L.all()):  # padding: per-token products on real tokens only
            rows_N = attention_mask_B_L.reshape(-1).nonzero().squeeze(1)
            x = F.embedding(input_ids_B_L.reshape(-1).index_select(0, rows_N), self.embed_V_H)
        else:
            x = F.embedding(input_ids_B_L, self.embed_V_H)
        keep_K = None
        if keep_B_L is not None and not bool(keep_B_L.all()):
            keep_flat = keep_B_L.reshape(-1).bool()
            keep_K = (keep_flat if rows_N is None else keep_flat.index_select(0, rows_N)).nonzero().squeeze(1)
        return self.forward_layers(x, position_ids_B_L, self._prefix_mask(attention_mask_B_L), rows_N=rows_N,
                                   keep_K=keep_K)[0]

    @torch.no_grad()
    def prefill(self, input_ids_B_P: torch.Tensor, attention_mask_B_P: torch.Tensor,
                position_ids_B_P: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Start decoding: fill a cache sized for ``max_new_tokens`` more; return last logits ``[B, V]``."""
        B, P = input_ids_B_P.shape
        self.cache = ContiguousKV(len(self.layers), B, P + max_new_tokens, self.n_kv_heads, self.head_dim,
                                  dtype=self.dtype, device=self.device)
        self.rope_tables(int(position_ids_B_P.max()) + max_new_tokens + 1)
        x = F.embedding(input_ids_B_P, self.embed_V_H)
        last_K = torch.arange(B, device=self.device) * P + (P - 1)  # prompts are left-padded
        h, _ = self.forward_layers(x, position_ids_B_P, self._prefix_mask(attention_mask_B_P), self.cache, keep_K=last_K)
        return self.logits(h[:, -1])

    @torch.no_grad()
    def decode(self, token_B: torch.Tensor, attention_mask: torch.Tensor, position_B: torch.Tensor) -> torch.Tensor:
        """One step: ``token_B`` goes to cache slot ``S - 1``; ``attention_mask`` ``[B, S]`` (1 on every
        slot to attend, this one included) or additive ``[B, 1, 1, S]`` (``additive_mask``: no
        conversion per step). Returns logits ``[B, V]``."""
        S = attention_mask.shape[-1]
        mask = attention_mask if attention_mask.dim() == 4 else attention_mask.bool()[:, None, None, :]
        x = F.embedding(token_B[:, None], self.embed_V_H)
        self.cache.start = S - 1
        h, _ = self.forward_layers(x, position_B[:, None], mask, self.cache)
        return self.logits(h[:, -1])

    def additive_mask(self, attention_mask_B_S: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 1, S]`` in the model's dtype: 0 where attended, -inf elsewhere."""
        zeros = torch.zeros(attention_mask_B_S.shape, dtype=self.dtype, device=attention_mask_B_S.device)
        return zeros.masked_fill(~attention_mask_B_S.bool(), float("-inf"))[:, None, None, :]


def _fuse_by_default(inner: torch.nn.Module, differentiable: bool) -> bool:
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    if differentiable or any(p.requires_grad for p in inner.parameters()):  # copied on every call
        return nbytes(inner.model.layers.parameters()) <= FUSE_PER_CALL_BYTES
    return nbytes(inner.parameters()) <= SNAPSHOT_CACHE_BYTES


def fast_forward(model: torch.nn.Module) -> Optional[FastLlama]:
    """A ``FastLlama`` over ``model``'s current weights, or None if it must use its own forward.

    A FROZEN model's snapshot is kept on it while its parameters keep their identity, storage and
    version counter (a frozen teacher is snapshotted once per run). Trainable models are snapshotted
    every call (the fused AdamW does not bump versions); models over ``SNAPSHOT_CACHE_BYTES`` never."""
    if torch.is_grad_enabled() or unsupported_reason(model) is not None:
        return None
    inner = unwrap(model)
    params = list(inner.parameters())
    if any(p.requires_grad for p in params) or sum(p.numel() * p.element_size() for p in params) > SNAPSHOT_CACHE_BYTES:
        return FastLlama(model)
    fingerprint = tuple((id(p), p.data_ptr(), p._version) for p in params)
    cached = inner.__dict__.get("_opdplug_fast")
    if cached is None or cached[0] != fingerprint:
        cached = (fingerprint, FastLlama(model))
        inner.__dict__["_opdplug_fast"] = cached
    # A shallow copy: the weights are shared, the KV cache and tables each call makes are its own.
    return copy.copy(cached[1])


def training_hidden(model: torch.nn.Module, input_ids_B_L: torch.Tensor, attention_mask_B_L: torch.Tensor,
                    position_ids_B_L: torch.Tensor, keep_B_L: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Final normed hidden states ``[B, L, H]`` WITH gradients to ``model``'s parameters, through
    the lean forward, or None when ``model`` must use its own forward.

    Why: on small models a student forward is mostly transformers' dispatch. Eligible: what
    ``hidden`` takes, no gradient checkpointing, no ``forward`` replaced on the instance (accelerate's
    mixed precision does that: its autocast must stay). Under DDP the forward still goes through
    DDP's ``forward`` (it readies the all-reduce) with the inner model's ``forward`` replaced for that
    one call, so one process and many run the same arithmetic and give the same numbers."""
    if unsupported_reason(model) is not None:
        return None
    inner = unwrap(model)
    checkpointed = any(layer.__dict__.get("gradient_checkpointing", False) for layer in inner.model.layers)
    if "forward" in inner.__dict__ or checkpointed:
        return None

    def lean_forward(input_ids, attention_mask, position_ids):
        return FastLlama(inner, differentiable=True).hidden_with_grad(input_ids, attention_mask, position_ids, keep_B_L)

    if model is inner:
        return lean_forward(input_ids_B_L, attention_mask_B_L, position_ids_B_L)
    inner.forward = lean_forward  # an instance attribute: nn.Module.__call__ runs it, DDP's hooks stay
    try:
        return model(input_ids=input_ids_B_L, attention_mask=attention_mask_B_L, position_ids=position_ids_B_L)
    finally:
        del inner.forward
