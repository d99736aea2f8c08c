"""An example third-party drafter kind, ``bigram``: the next token's distribution given the
previous one, counted on completions the target samples itself.

It uses only public API: ``opdplug.hookimpl``, ``opdplug.config.from_dict`` and
``opdplug.errors``; ``opdplug_drafters``' kind protocol (``DrafterKind``, ``TrainRequest``,
``TrainOutcome``, ``acceptance_of``); ``opdplug_local.sampling.sample``. ``table.py`` adds ``bigram_table``, the same drafter learnt by opdplug's core loop through
``DrafterKind.stages``. A config chooses one::

    [drafter]
    kind = "bigram"
    [drafter.options]
    prompts = 64
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from opdplug import hookimpl
from opdplug.config import from_dict
from opdplug.errors import ConfigError
from opdplug_drafters import DrafterKind, TrainOutcome, TrainRequest, acceptance_of

from .drafter import BigramDrafter

TABLE = "bigram.json"


@dataclass(frozen=True)
class BigramOptions:
    """``[drafter.options]`` of ``kind = "bigram"``."""

    prompts: int = 64
    """Training prompts; the target completes each once."""
    max_new_tokens: int = 32
    """Budget of each completion."""
    temperature: float = 1.0
    """Temperature the target samples its completions at."""
    smoothing: float = 0.01
    """Count added to every (previous, next) pair."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.max_new_tokens < 1 or self.temperature < 0 or self.smoothing <= 0:
            raise ConfigError("bigram needs prompts, max_new_tokens >= 1, temperature >= 0 and smoothing > 0")


def _validate(table: dict) -> BigramOptions:
    return from_dict(BigramOptions, table, "[drafter.options]")


def _train(request: TrainRequest) -> TrainOutcome:
    from opdplug_local.sampling import sample

    options: BigramOptions = request.options
    target, tokenizer = request.load_target()
    task = request.task(tokenizer)
    V = target.get_output_embeddings().weight.shape[0]
    prompts = task.prompts(options.prompts, seed=options.seed, split="train")
    result = sample(target, [list(p.prompt_ids) for p in prompts], max_new_tokens=options.max_new_tokens,
                    temperature=options.temperature, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                    generator=torch.Generator().manual_seed(options.seed))
    counts_V_V = torch.zeros(V, V)
    for row, mask in zip(result.input_ids_B_L.tolist(), result.attention_mask_B_L.tolist()):
        tokens = [t for t, m in zip(row, mask) if m]
        for a, b in zip(tokens, tokens[1:]):
            counts_V_V[a, b] += 1
    out = Path(request.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE).write_text(json.dumps({"kind": "bigram", "options": asdict(options), "counts": counts_V_V.tolist()}))
    reports = request.measure(target, tokenizer, task, BigramDrafter(counts_V_V, options.smoothing))
    return TrainOutcome(output_dir=out, steps=1, acceptance=acceptance_of(reports),
                        summary={"pairs": int(counts_V_V.sum())})


def _recognises(path: Path) -> bool:
    return (Path(path) / TABLE).is_file()


def _load(path: Path, target) -> BigramDrafter:
    data = json.loads((Path(path) / TABLE).read_text())
    counts_V_V = torch.tensor(data["counts"])
    V = target.get_output_embeddings().weight.shape[0]
    if counts_V_V.shape != (V, V):
        raise ConfigError(f"{str(path)!r}: the bigram table is {tuple(counts_V_V.shape)}, the target's vocabulary {V}")
    return BigramDrafter(counts_V_V, data["options"]["smoothing"])


def _export(source: Path, output_dir: Path, target_dir: Path) -> Path:
    """The table alone, checked against the target's vocabulary, written to ``output_dir``
    atomically (a temporary directory beside it, renamed into place)."""
    data = json.loads((Path(source) / TABLE).read_text())
    config = json.loads((Path(target_dir) / "config.json").read_text())
    V = int(config["vocab_size"])
    if len(data["counts"]) != V:
        raise ConfigError(f"{str(source)!r}: the bigram table has {len(data['counts'])} rows, the target's vocabulary {V}")
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        (tmp / TABLE).write_text(json.dumps(data))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


BIGRAM = DrafterKind("bigram", "next token given the previous one, counted on the target's samples",
                     load=_load, recognises=_recognises, train=_train, validate_options=_validate, export=_export)


@hookimpl
def opd_register_drafter_kinds(register):
    from .table import BIGRAM_TABLE  # a kind trained by opdplug's core loop (DrafterKind.stages)

    register(BIGRAM.name, BIGRAM)
    register(BIGRAM_TABLE.name, BIGRAM_TABLE)
