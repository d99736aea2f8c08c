"""Reading and writing EAGLE-3 heads: ``config.json`` + ``model.safetensors``, written atomically.

A training run writes its head to ``<run>/final/`` (older runs: ``<run>/head/``) without ``embed_tokens.weight`` (it is the
target's table, frozen; SGLang replaces it by the target's anyway). ``export.export_drafter`` adds
it back and audits everything. Every loader here accepts a run directory, a head directory or an
exported directory.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

import torch
import transformers
from safetensors.torch import load_file, save_file

from opdplug.errors import ConfigError

from .config import config_json, tensor_specs
from .model import Eagle3Head

HEAD_SUBDIR = "head"
"""Where the old ``train_eagle3`` loop put the head inside its output directory (still read)."""
FINAL_SUBDIR = "final"
"""Where a core-loop run puts the head inside its output directory (``opd_save_model``)."""
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIONAL_KEYS = frozenset({"embed_tokens.weight"})
"""Tensors a head checkpoint may omit: the loaders take them from the target."""


def resolve_head_dir(path: Union[str, os.PathLike]) -> Path:
    """The directory holding the head's ``config.json`` and ``model.safetensors`` under ``path``."""
    path = Path(path)
    for candidate in (path, path / FINAL_SUBDIR, path / HEAD_SUBDIR):
        if (candidate / CONFIG).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    raise ConfigError(
        f"{str(path)!r} holds no EAGLE-3 head ({CONFIG} and {WEIGHTS}, or {FINAL_SUBDIR}/ or {HEAD_SUBDIR}/ with both); "
        f"point at the output directory of train_eagle3 or at an exported head"
    )


def read_head_files(path: Union[str, os.PathLike]) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config dict, tensors)`` of the head under ``path`` (no validation beyond parsing)."""
    head_dir = resolve_head_dir(path)
    try:
        config = json.loads((head_dir / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{head_dir / CONFIG} is not valid JSON: {exc}") from None
    return config, load_file(str(head_dir / WEIGHTS))


def config_from_dict(data: dict) -> transformers.LlamaConfig:
    """The head's ``LlamaConfig`` from its ``config.json`` contents (as SGLang's AutoConfig reads it)."""
    data = {k: v for k, v in data.items() if k not in ("transformers_version",)}
    if data.get("model_type") != "llama":
        raise ConfigError(f"the head's config.json has model_type {data.get('model_type')!r}; an EAGLE-3 Llama head needs 'llama'")
    return transformers.LlamaConfig(**data)


def head_state(head: Eagle3Head, *, include_embeddings: bool) -> dict[str, torch.Tensor]:
    """The head's tensors under their exported names (``state_dict`` order), detached, contiguous."""
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    if not include_embeddings:
        state.pop("embed_tokens.weight")
    return state


def write_dir_atomically(final: Path, write) -> Path:
    """Call ``write(tmp_dir)``, fsync, then rename ``tmp_dir`` to ``final`` (replacing an old one
    whole). Anything raised inside ``write`` leaves no trace."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    old = None
    try:
        write(tmp)
        for file in tmp.iterdir():
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():
            old = final.parent / f".{final.name}-old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_head(head: Eagle3Head, directory: Union[str, os.PathLike], *, include_embeddings: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of ``head`` into ``directory`` atomically."""
    state = head_state(head, include_embeddings=include_embeddings)
    text = json.dumps(config_json(head.config, head.fc.weight.dtype), indent=2, sort_keys=True) + "\n"

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(text)

    return write_dir_atomically(Path(directory), write)


def load_head(path: Union[str, os.PathLike], target: torch.nn.Module) -> Eagle3Head:
    """The head under ``path`` with the target's embedding table, in eval mode.

    Every tensor of ``tensor_specs`` must be present with its shape (``embed_tokens.weight`` may
    be missing) and nothing else; the target must have the head's hidden size, vocabulary and
    enough layers for its ``aux_layers``.
    """
    data, tensors = read_head_files(path)
    config = config_from_dict(data)
    check_against_target(config, getattr(target, "config", None))
    specs = tensor_specs(config)
    missing = sorted(set(specs) - set(tensors) - OPTIONAL_KEYS)
    extra = sorted(set(tensors) - set(specs))
    if missing or extra:
        raise ConfigError(
            f"the head under {str(path)!r} does not match its config: "
            f"missing {missing[:3]}, unexpected {extra[:3]}; re-train or re-export it"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != specs[name][0]:
            raise ConfigError(f"{name} is {tuple(tensor.shape)}; the head's config needs {specs[name][0]}")
    head = Eagle3Head(config)
    state = head.state_dict()
    state.update({k: v for k, v in tensors.items() if k != "embed_tokens.weight"})
    head.load_state_dict(state)
    head.set_vocab(head.d2t.clone(), head.t2d.clone())  # validates the maps
    head.set_embedding(target)
    return head.eval()


def check_against_target(config: transformers.PretrainedConfig, target_config) -> None:
    """One-line ``ConfigError`` unless the head's shape fits ``target_config`` (a HF config)."""
    from .config import aux_layers_of, check_aux_layers

    if target_config is None:
        raise ConfigError("the target has no config; pass the Hugging Face model the head was trained against")
    for key in ("hidden_size", "vocab_size"):
        if getattr(config, key) != getattr(target_config, key):
            raise ConfigError(
                f"the head's {key} is {getattr(config, key)} but the target's is {getattr(target_config, key)}: "
                f"it was trained against another target"
            )
    check_aux_layers(aux_layers_of(config), target_config.num_hidden_layers)
