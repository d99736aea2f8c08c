"""Drafter kinds, registered through ``opd_register_drafter_kinds``.

A kind knows how to recognise its checkpoints and load one as a ``base.Drafter`` for a target;
``opdplug drafter eval`` and the bench go through the registry, so a third-party kind works
there too (register an object with the same three members).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from opdplug.errors import ConfigError


@dataclass(frozen=True)
class DrafterKind:
    """One registered kind of drafter."""

    name: str
    """Registry name (``[drafter] kind``)."""
    help: str
    """One line for listings."""
    load: Callable[[Path, Any], Any]
    """``load(path, target_model) -> Drafter``: a checkpoint directory, loaded for that target."""
    recognises: Callable[[Path], bool]
    """Whether a directory holds a checkpoint of this kind (for ``--kind auto``)."""


def _standalone_dir(path: Path) -> Path:
    from opdplug_local.evaluate import resolve_model_dir

    return resolve_model_dir(path)


def _load_standalone(path: Path, target) -> Any:
    from .standalone import StandaloneDrafter

    return StandaloneDrafter.from_pretrained(_standalone_dir(Path(path)), vocab_size=target.get_output_embeddings().weight.shape[0])


def _is_eagle3(path: Path) -> bool:
    path = Path(path)
    for config in (path / "config.json", path / "head" / "config.json"):
        if config.is_file():
            try:
                if "LlamaForCausalLMEagle3" in json.loads(config.read_text()).get("architectures", []):
                    return True
            except (OSError, json.JSONDecodeError):
                return False
    summary = path / "train_summary.json"
    if summary.is_file():
        try:
            return json.loads(summary.read_text()).get("kind") == "eagle3"
        except (OSError, json.JSONDecodeError):
            return False
    return False


def _is_standalone(path: Path) -> bool:
    return not _is_eagle3(path) and ((Path(path) / "config.json").is_file() or (Path(path) / "final" / "config.json").is_file())


def _load_eagle3(path: Path, target) -> Any:
    try:
        from .eagle3 import Eagle3Drafter
    except ImportError as exc:
        raise ConfigError(f"the eagle3 drafter kind needs opdplug_drafters.eagle3, which failed to import: {exc}") from None
    try:
        return Eagle3Drafter.from_pretrained(path, target)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ConfigError(f"{str(path)!r} could not be loaded as an EAGLE-3 head: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


STANDALONE = DrafterKind("standalone", "a small causal LM with the target's tokenizer (DistillSpec)", _load_standalone, _is_standalone)
EAGLE3 = DrafterKind("eagle3", "an EAGLE-3 head over the target's hidden states", _load_eagle3, _is_eagle3)


def detect_kind(path: Path, kinds: dict) -> str:
    """The registered kind whose ``recognises`` accepts ``path`` (EAGLE-3 checked first, as any
    model directory looks standalone); one-line error when none does."""
    order = sorted(kinds, key=lambda n: (n == "standalone", n))
    for name in order:
        recognises = getattr(kinds[name], "recognises", None)
        if recognises is not None and recognises(Path(path)):
            return name
    raise ConfigError(f"{str(path)!r} is not a drafter checkpoint any kind recognises ({', '.join(sorted(kinds))}); pass --kind")
