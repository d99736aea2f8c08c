"""The EAGLE-3 head's configuration and checkpoint layout, exactly as SGLang reads them: the
``config.json`` of a head for a given target (``draft_config``, ``config_json``), the target layers
it reads (``default_aux_layers``, ``check_aux_layers``, ``sglang_layer_ids``, ``aux_layers_of``)
and every tensor of an exported head (``tensor_specs``). ``model.Eagle3Head`` is built from it.

Auxiliary layer convention. ``aux_layers`` here are Hugging Face ``output_hidden_states`` indices:
index ``i`` is the residual stream ENTERING decoder layer ``i`` (0 = the token embeddings). SGLang's
config key ``eagle_config.eagle_aux_hidden_state_layer_ids`` is one less: for an id ``k`` it
captures the stream entering layer ``k + 1`` (``set_eagle3_layers_to_capture`` adds 1; the capture
happens in the attention prologue of that layer, before its input norm). So
``eagle_aux_hidden_state_layer_ids = [i - 1 for i in aux_layers]``, and ``i`` ranges over
``0 .. L-1`` (``L`` itself, the final output, is never captured by SGLang).

Targets. The head is always SGLang's Llama EAGLE-3 class, whatever the target's family: public
EAGLE-3 heads for Qwen targets are ``LlamaForCausalLMEagle3`` too. ``draft_config`` takes the
target's shape (hidden size, heads, key/value heads, head_dim, rope, norm eps, vocabulary) from a
Llama, Qwen2 or Qwen3 config; SGLang 0.5.23's ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` and
``Qwen3ForCausalLM`` all capture with the same convention (``set_eagle3_layers_to_capture`` adds 1).

Variants (``HeadNorms``). ``"eagle3"`` is the original head. ``"eagle3.1"`` adds what the public
EAGLE-3.1 checkpoints set (config flags ``fc_norm`` and ``norm_output``; SGLang 0.5.23 reads both):
an RMSNorm on each auxiliary feature before they are concatenated into ``fc`` (tensors
``fc_norm.{i}.weight``, ``[H]`` each), and post-norm feedback: the hidden state a draft step passes
to the next is the head's output AFTER its final ``norm`` (the one before ``lm_head``) instead of
before it. ``norm_before_fc`` is the other layout SGLang reads (one RMSNorm over the whole
concatenation, tensor ``input_norm.weight``, ``[n_aux * H]``; NVIDIA's gpt-oss heads).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

import torch
import transformers

from opdplug.errors import ConfigError

ARCHITECTURE = "LlamaForCausalLMEagle3"
"""The ``architectures`` entry SGLang's model registry maps to its EAGLE-3 Llama head."""

TARGET_TYPES = ("llama", "qwen2", "qwen3")
"""Target ``model_type``s a head is built for (their capture convention in SGLang is checked)."""


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class HeadNorms:
    """The optional norms of a head, under the ``config.json`` keys SGLang 0.5.23 reads."""

    fc_norm: bool = False
    """An RMSNorm on each auxiliary feature (width H) before concatenation and ``fc``."""
    norm_before_fc: bool = False
    """One RMSNorm over the concatenated features (width n_aux * H) before ``fc``."""
    norm_output: bool = False
    """Feed the NORMED output (after ``norm``, as ``lm_head`` sees it) to the next draft step."""

    def flags(self) -> dict[str, bool]:
        """The config.json keys to write (only the ones set, so an EAGLE-3 head's file is unchanged)."""
        return {k: True for k, v in asdict(self).items() if v}


VARIANTS = {"eagle3": HeadNorms(), "eagle3.1": HeadNorms(fc_norm=True, norm_output=True)}
"""Named variants: the original EAGLE-3 head, and EAGLE-3.1 as its public checkpoints set it."""


def head_norms(variant: Union[str, HeadNorms] = "eagle3", *, norm_before_fc: bool = False) -> HeadNorms:
    """The ``HeadNorms`` of a variant name (``VARIANTS``), plus ``norm_before_fc`` if asked; a
    one-line ``ConfigError`` for an unknown name."""
    if isinstance(variant, HeadNorms):
        norms = variant
    elif variant in VARIANTS:
        norms = VARIANTS[variant]
    else:
        raise ConfigError(f"unknown EAGLE-3 variant {variant!r}; choose one of {', '.join(repr(v) for v in VARIANTS)}")
    if norm_before_fc:
        norms = HeadNorms(fc_norm=norms.fc_norm, norm_before_fc=True, norm_output=norms.norm_output)
    return norms


def norms_of(config) -> HeadNorms:
    """The ``HeadNorms`` a head config (a HF config or a ``config.json`` dict) asks for, read the way
    SGLang 0.5.23 reads them (``fc_norm`` or the legacy ``use_aux_norm``; ``norm_before_fc`` in
    ``eagle_config`` or at the top; ``norm_output``)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    eagle = get("eagle_config") or {}
    before = eagle.get("norm_before_fc", get("norm_before_fc", False)) if isinstance(eagle, dict) else get("norm_before_fc", False)
    return HeadNorms(fc_norm=bool(get("fc_norm") or get("use_aux_norm", False)),
                     norm_before_fc=bool(before), norm_output=bool(get("norm_output", False)))


# ----------------------------------------------------------------------------- aux layers
def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """Low, middle and high target layers (HF hidden-state indices) for a target of ``num_layers``.

    SGLang's own default capture (entering layers ``2, L//2, L-3``) when those are distinct, as on
    every real target; on shallow targets they collide (L = 4 gives 2, 2, 1) and the fallback is
    ``1, L//2, L-1`` (L = 4 gives 1, 2, 3). Targets of fewer than 3 layers use every index
    ``0 .. L-1`` (index 0 being the token embeddings).
    """
    if num_layers < 1:
        raise ConfigError(f"the target has {num_layers} layers; an EAGLE-3 head needs at least 1")
    sglang_default = (2, num_layers // 2, num_layers - 3)
    if len(set(sglang_default)) == 3 and sorted(sglang_default) == list(sglang_default) and sglang_default[-1] <= num_layers - 1:
        return sglang_default
    fallback = (1, num_layers // 2, num_layers - 1)
    if len(set(fallback)) == 3 and list(fallback) == sorted(fallback):
        return fallback
    return tuple(range(num_layers))


def check_aux_layers(aux_layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """``aux_layers`` as a tuple, or a one-line ``ConfigError`` if SGLang could not capture them.

    They must be distinct and ascending (SGLang captures in layer order, so the fc's input columns
    follow that order, and a repeated id is captured once, breaking the fc's width) and within
    ``0 .. num_layers - 1`` (SGLang never captures the final layer's output).
    """
    layers = tuple(aux_layers)
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ConfigError(f"aux_layers must be a non-empty list of integers, got {list(aux_layers)!r}")
    bad = [i for i in layers if not 0 <= i <= num_layers - 1]
    if bad:
        raise ConfigError(
            f"aux_layers {list(layers)} has {bad} outside 0..{num_layers - 1} for a {num_layers}-layer target "
            f"(index i = hidden state entering layer i; SGLang cannot capture the final output)"
        )
    if len(set(layers)) != len(layers) or list(layers) != sorted(layers):
        raise ConfigError(
            f"aux_layers {list(layers)} must be distinct and ascending (SGLang captures each layer once, "
            f"in order); e.g. {list(default_aux_layers(num_layers))}"
        )
    return layers


def sglang_layer_ids(aux_layers: Sequence[int]) -> list[int]:
    """``eagle_aux_hidden_state_layer_ids`` for HF hidden-state indices ``aux_layers`` (each minus one)."""
    return [int(i) - 1 for i in aux_layers]


def aux_layers_of(config: transformers.PretrainedConfig) -> tuple[int, ...]:
    """The HF hidden-state indices a head config reads (its SGLang layer ids plus one)."""
    eagle = getattr(config, "eagle_config", None) or {}
    ids = eagle.get("eagle_aux_hidden_state_layer_ids") if isinstance(eagle, dict) else None
    if not ids:
        raise ConfigError(
            "the head's config.json has no eagle_config.eagle_aux_hidden_state_layer_ids; "
            "SGLang would fall back to layers that collide on shallow targets: write them explicitly"
        )
    return tuple(int(i) + 1 for i in ids)


# ----------------------------------------------------------------------------- config
def draft_config(
    target_config: transformers.PretrainedConfig,
    *,
    draft_vocab_size: int,
    aux_layers: Sequence[int],
    intermediate_size: Optional[int] = None,
    variant: Union[str, HeadNorms] = "eagle3",
) -> transformers.LlamaConfig:
    """The head's config, i.e. the ``config.json`` SGLang reads: the target's shape (hidden size,
    heads, head_dim, rope, norm eps, vocab) as a one-layer Llama, the draft vocabulary, the
    explicit capture layers and the variant's norm flags (``head_norms``).

    :param target_config: a Llama, Qwen2 or Qwen3 config (``TARGET_TYPES``)."""
    model_type = getattr(target_config, "model_type", None)
    if model_type not in TARGET_TYPES:
        raise ConfigError(
            f"an EAGLE-3 head is built for {', '.join(TARGET_TYPES)} targets; this target is {model_type!r}"
        )
    layers = check_aux_layers(aux_layers, target_config.num_hidden_layers)
    norms = head_norms(variant)
    H, heads = int(target_config.hidden_size), int(target_config.num_attention_heads)
    # Only the shape is taken: the target's own switches (Qwen2's q/k/v bias, Qwen3's q/k norms,
    # sliding windows, per-layer lists) describe ITS layers, not the head's.
    data = {key: getattr(target_config, key) for key in _SHAPE_KEYS if getattr(target_config, key, None) is not None}
    data.update(
        architectures=[ARCHITECTURE],
        num_hidden_layers=1,
        num_key_value_heads=int(getattr(target_config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(target_config, "head_dim", None) or H // heads),
        vocab_size=int(target_config.vocab_size),
        draft_vocab_size=int(draft_vocab_size),
        intermediate_size=int(intermediate_size or target_config.intermediate_size),
        tie_word_embeddings=False,  # SGLang would alias lm_head to the full-vocabulary embedding
        attention_bias=False,  # SGLang's EAGLE-3 q/k/v carry no bias
        mlp_bias=False,
        use_cache=True,
        eagle_config={"eagle_aux_hidden_state_layer_ids": sglang_layer_ids(layers), "use_aux_hidden_state": True},
        **norms.flags(),
    )
    return transformers.LlamaConfig(**data)


_SHAPE_KEYS = ("hidden_size", "num_attention_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps",
               "initializer_range", "rope_parameters", "rope_theta", "rope_scaling", "bos_token_id",
               "eos_token_id", "pad_token_id")
"""What a head copies from its target's config (besides the sizes ``draft_config`` sets itself)."""


def config_json(config: transformers.PretrainedConfig, dtype: torch.dtype) -> dict:
    """The ``config.json`` contents of a head config: its non-default fields (as
    ``save_pretrained`` writes them) plus ``dtype``, the float type of the saved weights."""
    data = config.to_diff_dict()
    data.pop("_name_or_path", None)
    # What SGLang and the audit read, written even where it equals LlamaConfig's default (a real
    # 8B target has hidden_size 4096, the default, which to_diff_dict would drop).
    full = config.to_dict()
    for key in ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "draft_vocab_size",
                "max_position_embeddings", "rms_norm_eps", "hidden_act", "rope_parameters",
                "tie_word_embeddings", "eagle_config", *HeadNorms().__dataclass_fields__):
        if key in full:
            data[key] = full[key]
    data["dtype"] = str(dtype).removeprefix("torch.")
    return data


def tensor_specs(config: transformers.PretrainedConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor an exported head holds: name -> (shape, kind), kind one of ``float``,
    ``int64`` (``d2t``) or ``bool`` (``t2d``). These names are what SGLang's ``load_weights`` maps
    (``midlayer`` -> ``model.layers.0``, q/k/v -> ``qkv_proj``, gate/up -> ``gate_up_proj``,
    everything else under ``model.`` except ``lm_head``)."""
    H = config.hidden_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    D = getattr(config, "head_dim", None) or H // heads
    inter = config.intermediate_size
    n_aux = len(aux_layers_of(config))
    V, Vd = config.vocab_size, config.draft_vocab_size
    return {
        "embed_tokens.weight": ((V, H), "float"),
        "fc.weight": ((H, n_aux * H), "float"),
        "midlayer.input_layernorm.weight": ((H,), "float"),
        "midlayer.hidden_norm.weight": ((H,), "float"),
        "midlayer.self_attn.q_proj.weight": ((heads * D, 2 * H), "float"),
        "midlayer.self_attn.k_proj.weight": ((kv_heads * D, 2 * H), "float"),
        "midlayer.self_attn.v_proj.weight": ((kv_heads * D, 2 * H), "float"),
        "midlayer.self_attn.o_proj.weight": ((H, heads * D), "float"),
        "midlayer.post_attention_layernorm.weight": ((H,), "float"),
        "midlayer.mlp.gate_proj.weight": ((inter, H), "float"),
        "midlayer.mlp.up_proj.weight": ((inter, H), "float"),
        "midlayer.mlp.down_proj.weight": ((H, inter), "float"),
        "norm.weight": ((H,), "float"),
        "lm_head.weight": ((Vd, H), "float"),
        "d2t": ((Vd,), "int64"),
        "t2d": ((V,), "bool"),
        **norm_specs(config),
    }


def norm_specs(config) -> dict[str, tuple[tuple[int, ...], str]]:
    """The tensors the variant's norms add (``norms_of``), under the names SGLang's
    ``load_weights`` maps to ``model.input_norm`` and ``model.fc_norm.{i}``."""
    H, n_aux, norms = config.hidden_size, len(aux_layers_of(config)), norms_of(config)
    specs = {}
    if norms.norm_before_fc:
        specs["input_norm.weight"] = ((n_aux * H,), "float")
    if norms.fc_norm:
        specs.update({f"fc_norm.{i}.weight": ((H,), "float") for i in range(n_aux)})
    return specs
