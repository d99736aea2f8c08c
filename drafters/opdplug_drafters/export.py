"""Export a trained drafter as a directory SGLang loads unmodified, after an audit.

``export_drafter(kind, source_dir, output_dir, *, target_dir)`` checks what every kind shares and
calls the registered kind's ``export``; the built-in kinds' are here:

* ``"eagle3"``: ``config.json`` (``architectures: ["LlamaForCausalLMEagle3"]``, one layer, the
  target's vocabulary and hidden size, ``draft_vocab_size``, explicit
  ``eagle_config.eagle_aux_hidden_state_layer_ids``) and ``model.safetensors`` holding exactly the
  tensors SGLang's ``LlamaForCausalLMEagle3.load_weights`` maps (``eagle3.config.tensor_specs``),
  ``embed_tokens.weight`` included (a copy of the target's table; SGLang swaps in the target's own
  at serving time, so every parameter it builds is still set from the file).
* ``"standalone"``: a plain causal LM directory (config, safetensors weights, tokenizer files,
  generation config) whose tokenizer is identical to the target's.

SGLang's loaders skip unknown tensor names silently, so a misnamed tensor would serve random
weights. Hence the audit, run on the tensors in memory BEFORE anything is written and again on the
written files in a temporary directory, which is renamed into place only when both pass. Any
failure is a one-line ``ConfigError`` and leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from opdplug.errors import ConfigError

from .eagle3.checkpoint import CONFIG, WEIGHTS, config_from_dict, read_head_files, write_dir_atomically
from .eagle3.config import ARCHITECTURE, TARGET_TYPES, aux_layers_of, check_aux_layers, config_json, tensor_specs
from .eagle3.vocab import check_vocab_maps

TARGET_EMBED_KEY = "model.embed_tokens.weight"
# config.json switches that make SGLang build parameters this head does not have. The variant
# norms (fc_norm / use_aux_norm, norm_before_fc, norm_output) are not here: the head has them, and
# tensor_specs asks for their tensors whenever the config sets them (config.norm_specs).
_UNSUPPORTED_FLAGS = ("bias", "attention_bias", "mlp_bias")


def export_drafter(
    kind: Any,
    source_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    *,
    target_dir: Union[str, os.PathLike],
    overwrite: bool = False,
) -> Path:
    """Audit the drafter in ``source_dir`` against the target in ``target_dir`` and write it to
    ``output_dir`` in the layout SGLang loads (``--speculative-algorithm EAGLE3`` or
    ``STANDALONE`` with ``--speculative-draft-model-path output_dir``). Returns ``output_dir``.

    :param kind: a registered drafter kind (``kinds.DrafterKind``) or its name, looked up in the
        installed plugins' registry: ``"eagle3"`` (``source_dir``: a ``train_eagle3`` run directory
        or its ``head/``), ``"standalone"`` (a Hugging Face causal LM directory or a DistillSpec
        run directory), or any kind with an ``export``.
    :param overwrite: replace an existing non-empty ``output_dir`` (atomically) instead of refusing.
    """
    if isinstance(kind, str):
        from opdplug.manager import make_plugin_manager

        from .kinds import get_kind

        kind = get_kind(make_plugin_manager().registry, kind, "kind")
    export = getattr(kind, "export", None)
    if export is None:
        raise ConfigError(f"drafter kind {getattr(kind, 'name', kind)!r} has no export (nothing SGLang would serve)")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ConfigError(f"{str(output_dir)!r} already exists and is not empty; choose another directory or pass overwrite=True")
    if not Path(target_dir).is_dir():
        raise ConfigError(f"target_dir = {str(target_dir)!r} is not a directory; point it at the target model SGLang serves")
    return export(Path(source_dir), output_dir, Path(target_dir))


# ----------------------------------------------------------------------------- target files
def _target_config(target_dir: Path):
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(str(target_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is the same user error
        raise ConfigError(f"target_dir = {str(target_dir)!r} has no readable config.json: {str(exc).splitlines()[0]}") from None


def _weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory; a pickle-only checkpoint is refused."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
            raise ConfigError(
                f"{str(model_dir)!r} holds only pickle weights (.bin/.pt), which are never loaded here; "
                f"re-save it with save_pretrained(safe_serialization=True)"
            )
        raise ConfigError(f"{str(model_dir)!r} holds no *.safetensors weights")
    return files


def read_target_tensor(target_dir: Path, name: str) -> torch.Tensor:
    """One tensor of the target's safetensors checkpoint (sharded or not), read alone."""
    for file in _weight_files(target_dir):
        with safe_open(str(file), framework="pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise ConfigError(f"the target in {str(target_dir)!r} has no tensor {name!r}; is it a Llama causal LM?")


# ----------------------------------------------------------------------------- eagle3
def audit_eagle3(
    config: dict,
    tensors: dict[str, torch.Tensor],
    target_config,
    target_embed_V_H: Optional[torch.Tensor] = None,
) -> None:
    """Raise a one-line ``ConfigError`` unless ``config`` + ``tensors`` is an EAGLE-3 head SGLang
    loads completely for ``target_config`` (a Llama, Qwen2 or Qwen3 target): the config's
    architecture, depth, sizes (hidden size, heads, head_dim against the target's), explicit
    capture layers (distinct, ascending, capturable in the target) and no switch that adds
    parameters the head lacks; every tensor of ``tensor_specs`` present with its shape and dtype
    (the variant's norms included: ``fc_norm.{i}``, ``input_norm``), finite, and no other;
    ``d2t``/``t2d`` consistent; the embedding equal to the target's."""
    V, H, L = int(target_config.vocab_size), int(target_config.hidden_size), int(target_config.num_hidden_layers)
    if getattr(target_config, "model_type", None) not in TARGET_TYPES:
        raise ConfigError(
            f"EAGLE-3 export audit: the target is {getattr(target_config, 'model_type', None)!r}; heads are exported "
            f"for {', '.join(TARGET_TYPES)} targets, whose capture convention SGLang 0.5.23 shares"
        )
    expect = {"architectures": [ARCHITECTURE], "model_type": "llama", "num_hidden_layers": 1,
              "hidden_size": H, "vocab_size": V, "tie_word_embeddings": False}
    for key, value in expect.items():
        if config.get(key, None if key != "tie_word_embeddings" else False) != value:
            raise ConfigError(f"EAGLE-3 export audit: config.json {key} is {config.get(key)!r}, expected {value!r}")
    if config.get("target_hidden_size", H) != H:
        raise ConfigError(f"EAGLE-3 export audit: config.json target_hidden_size is {config['target_hidden_size']}, the target's hidden size is {H}")
    flags = [f for f in _UNSUPPORTED_FLAGS if config.get(f)]
    eagle = config.get("eagle_config") or {}
    if flags:
        raise ConfigError(f"EAGLE-3 export audit: config.json sets {flags[0]}, which makes SGLang build weights or outputs this head does not have")
    if not isinstance(eagle, dict) or eagle.get("use_aux_hidden_state", True) is False:
        raise ConfigError("EAGLE-3 export audit: config.json eagle_config must be an object with use_aux_hidden_state true")
    Vd = config.get("draft_vocab_size")
    if not isinstance(Vd, int) or not 1 <= Vd <= V:
        raise ConfigError(f"EAGLE-3 export audit: config.json draft_vocab_size is {Vd!r}; it must be an integer in 1..{V}")
    ids = eagle.get("eagle_aux_hidden_state_layer_ids")
    if not ids:
        raise ConfigError(
            "EAGLE-3 export audit: config.json has no eagle_config.eagle_aux_hidden_state_layer_ids; SGLang would "
            "then capture the streams entering layers 2, L//2 and L-3, which collide on shallow targets: write them explicitly"
        )
    head_config = config_from_dict(config)
    aux = aux_layers_of(head_config)
    try:
        check_aux_layers(aux, L)
    except ConfigError:
        raise ConfigError(
            f"EAGLE-3 export audit: eagle_aux_hidden_state_layer_ids {ids} cannot be captured from this {L}-layer "
            f"target: they must be distinct ascending integers in -1..{L - 2} (SGLang captures the stream entering "
            f"layer id + 1, in layer order, never the final output)"
        ) from None
    if config.get("num_aux_hidden_states", len(aux)) != len(aux):
        raise ConfigError(f"EAGLE-3 export audit: num_aux_hidden_states is {config['num_aux_hidden_states']} but {len(aux)} layer ids are listed")

    specs = tensor_specs(head_config)
    missing = [k for k in specs if k not in tensors]
    if missing:
        raise ConfigError(f"EAGLE-3 export audit: tensor {missing[0]!r} is missing ({len(missing)} missing in all); SGLang would leave it random")
    extra = sorted(set(tensors) - set(specs))
    if extra:
        raise ConfigError(f"EAGLE-3 export audit: unexpected tensor {extra[0]!r} ({len(extra)} in all); SGLang would skip it silently")
    float_dtype = getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float32"), None)
    for name, (shape, kind) in specs.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise ConfigError(f"EAGLE-3 export audit: {name} has shape {tuple(t.shape)}, SGLang needs {shape}")
        want = {"int64": torch.int64, "bool": torch.bool}.get(kind, float_dtype)
        if t.dtype != want:
            raise ConfigError(f"EAGLE-3 export audit: {name} is {t.dtype}, expected {want} (config dtype {config.get('dtype')!r})")
        if kind == "float" and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"EAGLE-3 export audit: {name} holds NaN or inf values")
    try:
        check_vocab_maps(tensors["d2t"], tensors["t2d"], V)
    except ConfigError as exc:
        raise ConfigError(f"EAGLE-3 export audit: {exc}") from None
    if target_embed_V_H is not None and not torch.equal(tensors["embed_tokens.weight"], target_embed_V_H.to(float_dtype)):
        raise ConfigError(
            "EAGLE-3 export audit: embed_tokens.weight differs from the target's embedding; "
            "the head was trained against another target (check target_dir)"
        )


def export_eagle3(source_dir: Path, output_dir: Path, target_dir: Path) -> Path:
    """The ``eagle3`` kind's export: the head of a run directory (or ``head/``), audited, to ``output_dir``."""
    target_config = _target_config(target_dir)
    target_embed = read_target_tensor(target_dir, TARGET_EMBED_KEY)
    data, tensors = read_head_files(source_dir)
    if data.get("model_type") != "llama":
        raise ConfigError(f"EAGLE-3 export audit: config.json model_type is {data.get('model_type')!r}, expected 'llama'")
    float_dtype = tensors["fc.weight"].dtype if "fc.weight" in tensors else torch.float32
    tensors = dict(tensors)
    if "embed_tokens.weight" not in tensors:
        tensors["embed_tokens.weight"] = target_embed.to(float_dtype)
    config = config_json(config_from_dict(data), float_dtype)
    audit_eagle3(config, tensors, target_config, target_embed)  # in memory: nothing written yet
    order = list(tensor_specs(config_from_dict(config)))

    def write(tmp: Path) -> None:
        save_file({k: tensors[k].contiguous() for k in order}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        # Audit what was written, as SGLang will read it.
        audit_eagle3(json.loads((tmp / CONFIG).read_text()), load_file(str(tmp / WEIGHTS)), target_config, target_embed)

    return write_dir_atomically(output_dir, write)


# ----------------------------------------------------------------------------- standalone
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def _check_same_tokenizer(draft_dir: Path, target_dir: Path) -> None:
    """One-line ``ConfigError`` unless both directories' tokenizers have the same vocabulary and
    the same special tokens (ids and strings)."""
    from transformers import AutoTokenizer

    def load(path: Path, who: str):
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"the {who} in {str(path)!r} has no loadable tokenizer: {str(exc).splitlines()[0]}") from None

    draft, target = load(draft_dir, "drafter"), load(target_dir, "target")
    a, b = draft.get_vocab(), target.get_vocab()
    if a != b:
        diff = sorted(set(a) ^ set(b)) or sorted(t for t in a if a[t] != b[t])
        raise ConfigError(
            f"standalone export: the drafter's tokenizer differs from the target's ({len(a)} vs {len(b)} tokens, "
            f"e.g. {diff[0]!r}); a drafter must use the target's token ids"
        )
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(draft, name) != getattr(target, name) or getattr(draft, f"{name}_id") != getattr(target, f"{name}_id"):
            raise ConfigError(
                f"standalone export: {name} differs ({getattr(draft, name)!r} vs the target's {getattr(target, name)!r}); "
                f"save the drafter with the target's tokenizer"
            )
    if sorted(draft.all_special_tokens) != sorted(target.all_special_tokens):
        raise ConfigError("standalone export: the drafter's special tokens differ from the target's; save it with the target's tokenizer")


def audit_standalone(model_dir: Path, target_dir: Path) -> None:
    """One-line ``ConfigError`` unless ``model_dir`` is a causal LM transformers (and SGLang) load
    completely: config, safetensors whose tensor names and shapes are exactly the model's
    (tied weights may be absent), the target's vocabulary size, and the target's tokenizer."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"standalone export: {str(model_dir)!r} has no readable config.json: {str(exc).splitlines()[0]}") from None
    archs = getattr(config, "architectures", None) or []
    if not archs or not archs[0].endswith("ForCausalLM"):
        raise ConfigError(f"standalone export: config.json architectures is {archs}; a standalone drafter is a *ForCausalLM model")
    target_config = _target_config(target_dir)
    if config.vocab_size != target_config.vocab_size:
        raise ConfigError(
            f"standalone export: the drafter's vocab_size is {config.vocab_size}, the target's {target_config.vocab_size}; "
            f"draft and target distributions are compared id by id"
        )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found: dict[str, tuple] = {}
    for file in _weight_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                found[key] = tuple(f.get_slice(key).get_shape())
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(set(expected) - set(found) - tied)
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        what = f"tensor {missing[0]!r} is missing" if missing else f"unexpected tensor {extra[0]!r}"
        raise ConfigError(f"standalone export: {what} ({len(missing)} missing, {len(extra)} unexpected); the checkpoint does not match its config")
    for key, shape in found.items():
        if expected[key] != shape:
            raise ConfigError(f"standalone export: {key} has shape {shape}, the config needs {expected[key]}")
    _check_same_tokenizer(model_dir, target_dir)


def export_standalone(source_dir: Path, output_dir: Path, target_dir: Path) -> Path:
    """The ``standalone`` kind's export: a causal LM directory, audited, copied to ``output_dir``."""
    if not (source_dir / CONFIG).is_file():
        raise ConfigError(f"{str(source_dir)!r} has no config.json; a standalone drafter is a Hugging Face causal LM directory")
    audit_standalone(source_dir, target_dir)  # before writing anything
    files = [source_dir / n for n in (*_MODEL_FILES, *_TOKENIZER_FILES) if (source_dir / n).is_file()]
    files += _weight_files(source_dir)

    def write(tmp: Path) -> None:
        for file in files:
            shutil.copy2(file, tmp / file.name)
        audit_standalone(tmp, target_dir)

    return write_dir_atomically(output_dir, write)


# ----------------------------------------------------------------------------- SGLang check
SGLANG_CHECK_SCRIPT = Path(__file__).parent / "eagle3" / "sglang_check.py"
"""The script ``sglang_load_report`` runs with SGLang's Python (it imports nothing from opdplug)."""


@torch.no_grad()
def write_sglang_reference(head, path: Union[str, os.PathLike], *, n_tokens: int = 9, seed: int = 0) -> Path:
    """Random tokens, features and positions with the head's logits and the hidden state it hands
    to the next draft step over them (one causal extend; ``head.carry``: the pre-norm output, or
    the normed one for EAGLE-3.1), for ``sglang_check.py`` to recompute with SGLang's modules."""
    g = torch.Generator().manual_seed(seed)
    tokens_N = torch.randint(0, head.config.vocab_size, (n_tokens,), generator=g)
    feats_N_A = torch.randn(n_tokens, head.fc.in_features, generator=g).to(head.fc.weight.dtype)
    positions_N = torch.arange(n_tokens) + 3  # not starting at 0: rope offsets must agree too
    hidden = head.fuse(feats_N_A[None])
    q, k, v = head.project(tokens_N[None], hidden, positions_N[None])
    mask = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()[None]
    out_1_N_H = head.finish(head.attend(q, k, v, mask), hidden)
    logits = head.logits(out_1_N_H)[0]
    path = Path(path)
    save_file({"tokens": tokens_N, "features": feats_N_A.contiguous(), "positions": positions_N,
               "logits": logits.contiguous(), "hidden": head.carry(out_1_N_H)[0].contiguous()}, str(path))
    return path


def sglang_load_report(
    export_dir: Union[str, os.PathLike],
    *,
    python: Union[str, os.PathLike],
    reference: Union[str, os.PathLike, None] = None,
    timeout: float = 900,
) -> dict:
    """Run ``eagle3/sglang_check.py`` with SGLang's ``python`` on ``export_dir`` (CPU, world size
    1) and return its report: ``problems`` (empty when SGLang's ``LlamaForCausalLMEagle3`` set
    every parameter from the file and consumed every tensor), ``calls`` (file tensor -> SGLang
    parameter, shard), ``params``, ``hot_token_id`` and, with a ``reference``, the largest
    differences between SGLang's and opdplug's logits and hidden states."""
    import socket
    import subprocess

    with socket.socket() as s:  # a free port for the gloo rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MASTER_PORT")}
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    cmd = [str(python), str(SGLANG_CHECK_SCRIPT), str(export_dir), str(reference or "-"), str(port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"SGLang's loader check failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(lines[-1][len("REPORT "):])
