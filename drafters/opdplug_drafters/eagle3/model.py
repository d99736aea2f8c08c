"""The EAGLE-3 draft head, laid out exactly as SGLang's ``LlamaForCausalLMEagle3`` loads it.

What SGLang 0.5.23 builds (``sglang/srt/models/llama_eagle3.py``) and what this module mirrors:

* ``fc``: Linear(n_aux * H -> H, no bias) over the target's auxiliary hidden states, concatenated
  in ascending layer order (SGLang captures them while walking the layers, whatever order the
  config lists them in);
* ``midlayer`` (loaded into SGLang's ``model.layers.0``): one Llama decoder layer whose q/k/v
  take 2H inputs: ``cat(input_layernorm(embed(token)), hidden_norm(h))``, where ``h`` is the fused
  features (first step) or the head's own previous output (later steps); the residual is ``h``
  itself (un-normed); then ``o_proj`` + residual, ``post_attention_layernorm``, SiLU MLP + residual;
* ``norm`` then ``lm_head`` [draft_vocab, H] give the draft logits; the PRE-norm output
  (``mlp + residual``) is the hidden state fed to the next draft step (EAGLE-3.1, ``norm_output``:
  the normed one, as SGLang's ``LlamaModel`` returns it as ``aux`` then);
* optional norms of the variant (``config.HeadNorms``): ``fc_norm`` (one RMSNorm per auxiliary
  feature before ``fc``, EAGLE-3.1) and ``input_norm`` (one over the concatenation,
  ``norm_before_fc``), applied in that order, as SGLang applies them;
* ``embed_tokens``: the target's table, frozen (SGLang replaces the draft's table with the
  target's at serving time via ``set_embed``; a copy is still exported so every parameter SGLang
  builds is set from the file);
* ``d2t`` [draft_vocab] (int64 offsets, ``target_id = draft_id + d2t[draft_id]``; SGLang turns it
  into ``hot_token_id``) and ``t2d`` [vocab] (bool; SGLang skips it, kept for the audit).

Positions follow SGLang's draft worker: the pair (token ``x_{t+1}``, feature ``f_t``) sits at
position ``t``; draft step ``j`` of a chain rooted at ``t`` sits at position ``t + j`` and sees the
feature-based entries at positions ``<= t`` plus its own chain's entries.

The head's config, its auxiliary layers and the exported tensor names are in ``config.py``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from opdplug.errors import ConfigError

from .config import aux_layers_of, norms_of


# ----------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    """Llama's RMSNorm (normalise in float32, scale in the input dtype)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps)
        return self.weight * y.to(x.dtype)


class Eagle3Attention(nn.Module):
    """Llama attention projections with 2H inputs; the attention itself is done by the caller
    (training and drafting attend to different key sets)."""

    def __init__(self, config: transformers.LlamaConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or H // self.num_heads
        self.q_proj = nn.Linear(2 * H, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(2 * H, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(2 * H, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, H, bias=False)


class Eagle3MLP(nn.Module):
    def __init__(self, config: transformers.LlamaConfig):
        super().__init__()
        H, inter = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(H, inter, bias=False)
        self.up_proj = nn.Linear(H, inter, bias=False)
        self.down_proj = nn.Linear(inter, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Eagle3MidLayer(nn.Module):
    """The single decoder layer (SGLang's ``layers.0``, checkpoint prefix ``midlayer``)."""

    def __init__(self, config: transformers.LlamaConfig):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.hidden_norm = RMSNorm(config.hidden_size, eps)
        self.self_attn = Eagle3Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = Eagle3MLP(config)


class Eagle3Head(nn.Module):
    """The EAGLE-3 head. ``state_dict()`` keys are exactly the exported tensor names."""

    def __init__(self, config: transformers.LlamaConfig):
        super().__init__()
        self.config = config
        self.aux_layers = aux_layers_of(config)
        H, V, Vd = config.hidden_size, config.vocab_size, config.draft_vocab_size
        if not 1 <= Vd <= V:
            raise ConfigError(f"draft_vocab_size = {Vd} must be in 1..{V} (the target's vocabulary)")
        self.embed_tokens = nn.Embedding(V, H)
        self.embed_tokens.weight.requires_grad_(False)  # the target's table: never trained
        self.norms = norms_of(config)
        n_aux = len(self.aux_layers)
        # Created only when the variant has them, so an EAGLE-3 head's state_dict is unchanged.
        if self.norms.norm_before_fc:
            self.input_norm = RMSNorm(n_aux * H, config.rms_norm_eps)
        if self.norms.fc_norm:
            self.fc_norm = nn.ModuleList(RMSNorm(H, config.rms_norm_eps) for _ in range(n_aux))
        self.fc = nn.Linear(n_aux * H, H, bias=False)
        self.midlayer = Eagle3MidLayer(config)
        self.norm = RMSNorm(H, config.rms_norm_eps)
        self.lm_head = nn.Linear(H, Vd, bias=False)
        self.register_buffer("d2t", torch.zeros(Vd, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(V, dtype=torch.bool))
        self.t2d[:Vd] = True
        # The target's own rotary module (any static rope type SGLang also supports); its inverse
        # frequencies are non-persistent buffers, so they never reach the checkpoint.
        rope_config = copy.deepcopy(config)
        rope_config.num_hidden_layers = 1
        self.rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(rope_config)
        self._init_weights(getattr(config, "initializer_range", 0.02))

    def _init_weights(self, std: float) -> None:
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)

    # -------------------------------------------------------------------------------- vocabulary
    @property
    def draft_to_target_Vd(self) -> torch.Tensor:
        """Target id of every draft id (``arange + d2t``), long."""
        return torch.arange(self.d2t.shape[0], device=self.d2t.device) + self.d2t

    def set_vocab(self, d2t_Vd: torch.Tensor, t2d_V: torch.Tensor) -> None:
        """Install the draft vocabulary maps (see ``vocab.build_vocab``)."""
        from .vocab import check_vocab_maps

        check_vocab_maps(d2t_Vd, t2d_V, self.config.vocab_size)
        if d2t_Vd.shape != self.d2t.shape:
            raise ConfigError(f"d2t has {d2t_Vd.shape[0]} entries; the head's draft_vocab_size is {self.d2t.shape[0]}")
        self.d2t.copy_(d2t_Vd)
        self.t2d.copy_(t2d_V)

    @torch.no_grad()
    def init_from_target(self, target: nn.Module) -> None:
        """Copy the target's embedding (frozen) and, as a warm start, its final norm and the
        lm-head rows of the draft vocabulary (set the vocabulary first)."""
        self.set_embedding(target)
        inner = target.module if hasattr(target, "module") else target
        self.lm_head.weight.copy_(inner.get_output_embeddings().weight[self.draft_to_target_Vd])
        self.norm.weight.copy_(inner.model.norm.weight)

    @torch.no_grad()
    def set_embedding(self, target: nn.Module) -> None:
        """Take the target's (frozen) embedding table, as SGLang does at serving time."""
        inner = target.module if hasattr(target, "module") else target
        embed = inner.get_input_embeddings().weight
        if embed.shape != self.embed_tokens.weight.shape:
            raise ConfigError(
                f"the target's embedding is {tuple(embed.shape)}, the head expects {tuple(self.embed_tokens.weight.shape)}"
            )
        self.embed_tokens.weight.copy_(embed)

    # -------------------------------------------------------------------------------- pieces
    def rope(self, positions_B_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[B, N, 1, D]`` for the given positions."""
        cos, sin = self.rotary(self.fc.weight, positions_B_N)
        return cos[:, :, None].to(self.fc.weight.dtype), sin[:, :, None].to(self.fc.weight.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    def fuse(self, features_B_N_A: torch.Tensor) -> torch.Tensor:
        """The fc projection of the concatenated target features: ``[B, N, H]`` (after the
        variant's feature norms: the whole concatenation first, then each feature, as SGLang)."""
        x = features_B_N_A.to(self.fc.weight.dtype)
        if self.norms.norm_before_fc:
            x = self.input_norm(x)
        if self.norms.fc_norm:
            x = torch.cat([norm(chunk) for norm, chunk in zip(self.fc_norm, x.chunk(len(self.fc_norm), dim=-1))], dim=-1)
        return self.fc(x)

    def project(
        self, tokens_B_N: torch.Tensor, hidden_B_N_H: torch.Tensor, positions_B_N: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's queries, keys and values (rotated), ``[B, N, heads, D]``."""
        layer = self.midlayer
        att = layer.self_attn
        x_B_N_2H = torch.cat(
            [layer.input_layernorm(self.embed_tokens(tokens_B_N)), layer.hidden_norm(hidden_B_N_H)], dim=-1
        )
        B, N, _ = x_B_N_2H.shape
        q = att.q_proj(x_B_N_2H).view(B, N, att.num_heads, att.head_dim)
        k = att.k_proj(x_B_N_2H).view(B, N, att.num_kv_heads, att.head_dim)
        v = att.v_proj(x_B_N_2H).view(B, N, att.num_kv_heads, att.head_dim)
        cos, sin = self.rope(positions_B_N)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin), v

    def finish(self, attn_B_N_HD: torch.Tensor, residual_B_N_H: torch.Tensor) -> torch.Tensor:
        """o_proj + residual, then the MLP block: the PRE-norm output ``[B, N, H]`` that the next
        draft step takes as its hidden state (SGLang's ``hidden_states_to_aux``)."""
        layer = self.midlayer
        h = layer.self_attn.o_proj(attn_B_N_HD) + residual_B_N_H
        return layer.mlp(layer.post_attention_layernorm(h)) + h

    def logits(self, out_B_N_H: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits ``[B, N, Vd]``."""
        return self.lm_head(self.norm(out_B_N_H))

    def carry(self, out_B_N_H: torch.Tensor) -> torch.Tensor:
        """The hidden state a draft step hands to the next: its pre-norm output, or with
        ``norm_output`` (EAGLE-3.1) that output after ``norm``."""
        return self.norm(out_B_N_H) if self.norms.norm_output else out_B_N_H

    @property
    def scaling(self) -> float:
        return self.midlayer.self_attn.head_dim ** -0.5

    # -------------------------------------------------------------------------------- training
    def ttt_forward(
        self,
        input_ids_B_L: torch.Tensor,
        features_B_L_A: torch.Tensor,
        attention_mask_B_L: torch.Tensor,
        ttt_steps: int,
    ) -> list[torch.Tensor]:
        """Training-time-test unrolling: draft-vocabulary logits ``[B, L-1, Vd]`` per step.

        Index ``t`` (0 .. L-2) roots a chain at position t: step 0 reads token ``x_{t+1}`` and the
        fused target features ``f_t`` and predicts ``x_{t+2}``; step ``j`` reads ``x_{t+1+j}`` (the
        data token, teacher forcing) and the head's own step ``j-1`` output at index t, sits at
        position ``t + j`` and predicts ``x_{t+2+j}``. Attention at step j: the step-0 entries at
        indices ``<= t`` (feature-based, as SGLang's draft KV cache after a verify) and index t's
        own entries of steps 1..j (its chain), nothing else: exactly what drafting sees.

        :param input_ids_B_L: right-padded token ids.
        :param features_B_L_A: target features per position (HF hidden states at ``aux_layers``
            concatenated; position t describes token t).
        :param attention_mask_B_L: 1 on real tokens.
        """
        B, L = input_ids_B_L.shape
        N = L - 1
        positions_B_L = (attention_mask_B_L.long().cumsum(-1) - 1).clamp(min=0)
        positions_B_N = positions_B_L[:, :N]
        valid_key_B_N = attention_mask_B_L[:, :N].bool()
        causal_N_N = torch.ones(N, N, dtype=torch.bool, device=input_ids_B_L.device).tril()
        # Step-0 keys visible to query t: s <= t and real; the diagonal always, so a padding query
        # never has an empty row (its output is masked out of the loss anyway).
        mask0_B_1_N_N = (causal_N_N[None] & valid_key_B_N[:, None, :]) | torch.eye(N, dtype=torch.bool, device=causal_N_N.device)
        mask0_B_1_N_N = mask0_B_1_N_N[:, None]
        hidden_B_N_H = self.fuse(features_B_L_A[:, :N])
        pad = torch.zeros(B, ttt_steps, dtype=input_ids_B_L.dtype, device=input_ids_B_L.device)
        ids_ext_B_L = torch.cat([input_ids_B_L, pad], dim=1)
        keys, values, out = [], [], []
        for j in range(ttt_steps):
            tokens_B_N = ids_ext_B_L[:, 1 + j:1 + j + N]
            q, k, v = self.project(tokens_B_N, hidden_B_N_H, positions_B_N + j)
            keys.append(k)
            values.append(v)
            attn = self._ttt_attention(q, keys, values, mask0_B_1_N_N)
            out_B_N_H = self.finish(attn, hidden_B_N_H)
            out.append(self.logits(out_B_N_H))
            hidden_B_N_H = self.carry(out_B_N_H)
        return out

    def _ttt_attention(self, q_B_N_h_D, keys, values, mask0_B_1_N_N) -> torch.Tensor:
        """Attention over the step-0 entries (causal) plus each index's own chain entries
        (steps 1..j, diagonal). Scores of the chain entries are per-index dot products, so the
        cost stays O(N^2 + jN) instead of O((j+1) N^2)."""
        B, N, h, D = q_B_N_h_D.shape
        rep = h // keys[0].shape[2]
        q = q_B_N_h_D.transpose(1, 2)  # [B, h, N, D]
        expand = lambda t: t.repeat_interleave(rep, dim=2).transpose(1, 2) if rep > 1 else t.transpose(1, 2)  # noqa: E731
        k0, v0 = expand(keys[0]), expand(values[0])
        scores0 = (q @ k0.transpose(-1, -2)) * self.scaling
        scores0 = scores0.masked_fill(~mask0_B_1_N_N, float("-inf"))
        chain_k = [expand(k) for k in keys[1:]]
        chain_v = [expand(v) for v in values[1:]]
        if chain_k:
            diag = torch.stack([(q * k).sum(-1) for k in chain_k], dim=-1) * self.scaling  # [B, h, N, j]
            probs = torch.softmax(torch.cat([scores0, diag], dim=-1).float(), dim=-1).to(q.dtype)
            p0, pd = probs[..., :N], probs[..., N:]
            out = p0 @ v0 + sum(pd[..., i:i + 1] * v for i, v in enumerate(chain_v))
        else:
            out = torch.softmax(scores0.float(), dim=-1).to(q.dtype) @ v0
        return out.transpose(1, 2).reshape(B, N, h * D)

    # -------------------------------------------------------------------------------- drafting
    def attend(
        self, q_B_N_h_D: torch.Tensor, k_B_S_g_D: torch.Tensor, v_B_S_g_D: torch.Tensor, mask_B_N_S: torch.Tensor
    ) -> torch.Tensor:
        """Plain masked attention (drafting): queries ``[B, N]`` over keys ``[B, S]``; returns ``[B, N, h*D]``."""
        B, N, h, D = q_B_N_h_D.shape
        out = F.scaled_dot_product_attention(
            q_B_N_h_D.transpose(1, 2), k_B_S_g_D.transpose(1, 2), v_B_S_g_D.transpose(1, 2),
            attn_mask=mask_B_N_S[:, None], scale=self.scaling, enable_gqa=h != k_B_S_g_D.shape[2],
        )
        return out.transpose(1, 2).reshape(B, N, h * D)
