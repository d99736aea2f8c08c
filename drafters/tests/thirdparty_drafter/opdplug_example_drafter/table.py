"""A second example kind, ``bigram_table``: the same next-token-given-previous drafter, but a
table of logits LEARNT by opdplug's core loop, to show a third-party kind training there.

The kind gives ``DrafterKind.stages``: the loop asks it to load the models (the target from
``[teacher] path``, a zero table as the student), to roll out (the target samples, one seed per
global row) and for the student's forward pass (the table as a one-layer "model": the previous
token one-hot, times the table), and to save the result. Everything else is the core loop's and
other plugins': the teacher scores (``[teacher] scorer``, the local target by default), the loss
(``[loss]``: e.g. ``tvd`` over the full vocabulary), the optimizer and schedule (``[run]``),
checkpoints and resume, metrics. Public API only::

    [drafter]
    kind = "bigram_table"
    [drafter.options]
    max_new_tokens = 16
    [loss]
    divergence = "tvd"
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from opdplug.config import from_dict
from opdplug.errors import ConfigError
from opdplug.types import PRODUCER_TEACHER, LoadedModels, StudentOutputs
from opdplug_drafters import DrafterKind, TrainOutcome, TrainRequest, acceptance_of

from .drafter import BigramDrafter

WEIGHTS = "bigram_table.safetensors"


@dataclass(frozen=True)
class TableOptions:
    """``[drafter.options]`` of ``kind = "bigram_table"``."""

    max_new_tokens: int = 16
    """Budget of the target's completions (sampled at ``[rollout] temperature``)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("bigram_table needs max_new_tokens >= 1")


class BigramTable(torch.nn.Module):
    """Logits of the next token given the previous one: ``[V, V]``, trained by the core loop."""

    opd_self_test = False  # not a causal LM the token plugin's self-test can sample

    def __init__(self, vocab_size: int):
        super().__init__()
        self.logits_V_V = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def forward(self, input_ids_B_L: torch.Tensor) -> torch.Tensor:
        """One-hot previous tokens, shifted as ``StudentOutputs`` wants (position t predicts
        token t, from token t - 1; position 0 is a zero row): ``[B, L, V]``."""
        V = self.logits_V_V.shape[0]
        onehot_B_L_V = torch.nn.functional.one_hot(input_ids_B_L, V).to(self.logits_V_V.dtype)
        return torch.cat([torch.zeros_like(onehot_B_L_V[:, :1]), onehot_B_L_V[:, :-1]], dim=1)


def _options(ctx) -> TableOptions:
    return _validate(ctx.config.plugin("drafter").options)


class TableStages:
    """The stages the core loop takes from this kind (the rest are its defaults)."""

    def load_models(self, ctx) -> LoadedModels:
        from opdplug_local.models import load_model, load_tokenizer

        if not ctx.config.teacher.path:
            raise ConfigError("bigram_table needs [teacher] path: the target")
        target = load_model(ctx.config.teacher.path, "teacher.path").requires_grad_(False).eval().to(ctx.device)
        V = target.get_output_embeddings().weight.shape[0]
        return LoadedModels(student=BigramTable(V).to(ctx.device), tokenizer=load_tokenizer(ctx.config.teacher.path),
                            teacher=target)

    def rollout(self, ctx, prompts, step):
        from opdplug_local.models import model_rollout

        return model_rollout(ctx.teacher, prompts, producer=PRODUCER_TEACHER, max_new_tokens=_options(ctx).max_new_tokens,
                             temperature=ctx.config.rollout.temperature, top_p=1.0, tokenizer=ctx.tokenizer,
                             generator=None, row_seeds=ctx.row_seeds(prompts, "bigram_table", step), on_policy=False)

    def student_forward(self, ctx, batch) -> StudentOutputs:
        # Through the prepared module (DDP runs its forward); the table is the output projection.
        hidden_B_L_V = ctx.student(batch.input_ids_B_L.to(ctx.device))
        return StudentOutputs(hidden_B_L_H=hidden_B_L_V, lm_head_V_H=ctx.student_module().logits_V_V.t(),
                              temperature=ctx.config.rollout.temperature)

    def save_model(self, ctx, directory: Path) -> Path:
        return _write_atomically(Path(directory), ctx.student_module().logits_V_V.detach().cpu())


def _write_atomically(directory: Path, logits_V_V: torch.Tensor) -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_file({"logits_V_V": logits_V_V.contiguous()}, str(tmp / WEIGHTS))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _validate(table: dict) -> TableOptions:
    return from_dict(TableOptions, table, "[drafter.options]")


def _weights(path: Path) -> Path:
    for candidate in (Path(path) / WEIGHTS, Path(path) / "final" / WEIGHTS):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{str(path)!r} holds no {WEIGHTS}")


def _recognises(path: Path) -> bool:
    return any((p / WEIGHTS).is_file() for p in (Path(path), Path(path) / "final"))


def _load(path: Path, target):
    logits_V_V = load_file(str(_weights(path)))["logits_V_V"]
    V = target.get_output_embeddings().weight.shape[0]
    if logits_V_V.shape != (V, V):
        raise ConfigError(f"{str(path)!r}: the table is {tuple(logits_V_V.shape)}, the target's vocabulary {V}")
    return BigramDrafter.from_logits(logits_V_V)


def _train(request: TrainRequest) -> TrainOutcome:
    """The core loop on the config, then the drafter measured by speculative decoding."""
    from opdplug.loop import train

    run = {"output_dir": str(request.output_dir), **({"steps": request.steps} if request.steps else {}),
           **({"progress": False} if request.quiet else {})}
    result = train(request.config.replace(run=run), request.manager, progress_desc="bigram_table")
    target, tokenizer = request.load_target()
    task = request.task(tokenizer)
    reports = request.measure(target, tokenizer, task, _load(result.output_dir, target))
    return TrainOutcome(output_dir=result.output_dir, steps=result.steps_done, acceptance=acceptance_of(reports),
                        summary={"losses": [m["loss"] for m in result.history]})


def _export(source: Path, output_dir: Path, target_dir: Path) -> Path:
    return _write_atomically(Path(output_dir), load_file(str(_weights(source)))["logits_V_V"])


TABLE_STAGES = TableStages()
BIGRAM_TABLE = DrafterKind("bigram_table", "next token given the previous one, a logit table learnt in the core loop",
                           load=_load, recognises=_recognises, train=_train, validate_options=_validate, export=_export,
                           stages=lambda: TABLE_STAGES)
