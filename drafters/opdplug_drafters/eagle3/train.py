"""Training an EAGLE-3 head: the core loop (``opdplug.loop.train``) with the kind's stages.

There is no training loop here. An ``eagle3`` config (``[drafter] kind = "eagle3"``) runs through
the loop every opdplug run uses, the drafters plugin handing it the EAGLE-3 stages
(``stages.py``: target samples, feature capture, TTT unroll and loss, head checkpoint), so
``opdplug train CONFIG``, ``opdplug drafter train CONFIG`` and ``train_eagle3(config)`` are the
same run: ``[run]`` optimizer and schedule, accelerate, atomic safetensors checkpoints, resume,
``metrics.jsonl`` and a progress bar.

``eagle3_config`` builds such a config in code; ``read_metrics`` and ``plot_metrics`` read a
run's ``metrics.jsonl`` back as the per-split rows the EAGLE-3 tools draw.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from opdplug.errors import ConfigError

from .options import Eagle3Options  # noqa: F401 (re-exported: the public name)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"


@dataclass(frozen=True)
class Eagle3Result:
    """What ``train_eagle3`` returns."""

    output_dir: Path
    """The run directory."""
    head_dir: Optional[Path]
    """The trained head (``final/``: ``config.json`` + ``model.safetensors``, no embedding table):
    give the run directory to ``Eagle3Drafter.from_pretrained`` or ``export_drafter``. None when
    the run stopped early (``run.stop_after``)."""
    metrics_path: Path
    """``metrics.jsonl``: one row per logged step (see ``read_metrics``)."""
    steps_done: int
    """Optimizer steps done in total (including those before a resume)."""
    aux_layers: tuple[int, ...]
    """HF hidden-state indices the head reads (SGLang ids are these minus one)."""
    draft_vocab_size: int
    """Size of the head's output vocabulary."""
    history: list = field(default_factory=list)
    """The loop's metric dict of every step this invocation ran."""
    evals: list = field(default_factory=list)
    """The held-out proxy rows (``read_metrics(..., "eval")``) of the whole run."""


def eagle3_config(
    target_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    *,
    run: Optional[dict] = None,
    options: Union[Eagle3Options, dict, None] = None,
    task: Optional[dict] = None,
    drafter: Optional[dict] = None,
    manager=None,
):
    """The ``Config`` of an EAGLE-3 run, as the TOML would give it (validated the same way).

    :param run: ``[run]`` keys (steps, batch_size, lr, warmup_steps, checkpoint_every, seed, ...).
    :param options: ``[drafter.eagle3]``: an ``Eagle3Options`` or a dict of its keys.
    :param task: ``{"name": ..., "options": {...}}``; default the built-in SumChain.
    :param drafter: other ``[drafter]`` keys (``draft_tokens``, ``eval_prompts`` ...).
    """
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager

    manager = manager or make_plugin_manager()
    if isinstance(options, Eagle3Options):
        options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items() if v is not None}
    data = {
        "run": {**(run or {}), "output_dir": str(output_dir)},
        "teacher": {"path": str(target_dir)},
        "task": task or {},
        "drafter": {**(drafter or {}), "kind": "eagle3", "eagle3": dict(options or {})},
    }
    return parse_config(data, manager.plugin_tables(), source="eagle3_config")


def train_eagle3(config, manager=None, *, progress_desc: str = "eagle3") -> Eagle3Result:
    """Run (or resume) the EAGLE-3 run ``config`` describes (``eagle3_config`` or a TOML with
    ``[drafter] kind = "eagle3"``) in the core loop; the head lands in ``<output_dir>/final``."""
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager

    if config.plugin("drafter").kind != "eagle3":
        raise ConfigError(f"train_eagle3 needs [drafter] kind = 'eagle3', got {config.plugin('drafter').kind!r}")
    result = train(config, manager or make_plugin_manager(), progress_desc=progress_desc)
    out = Path(result.output_dir)
    summary = json.loads((out / SUMMARY_FILE).read_text()) if (out / SUMMARY_FILE).is_file() else {}
    return Eagle3Result(
        output_dir=out, head_dir=result.final_model_dir, metrics_path=out / METRICS_FILE, steps_done=result.steps_done,
        aux_layers=tuple(summary.get("aux_layers", ())), draft_vocab_size=int(summary.get("draft_vocab_size", 0)),
        history=result.history, evals=read_metrics(out, "eval") if (out / METRICS_FILE).is_file() else [],
    )


# ----------------------------------------------------------------------------- reporting
def _per_step(row: dict, prefix: str, name: str) -> list:
    keys = sorted((k for k in row if k.startswith(f"{prefix}/{name}_") and k[len(prefix) + len(name) + 2:].isdigit()),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    return [row[k] for k in keys]


def _split_row(row: dict, prefix: str) -> Optional[dict]:
    """One loop row's ``prefix/*`` metrics in the EAGLE-3 tools' shape, or None if absent."""
    if f"{prefix}/accept_len" not in row:
        return None
    by_k = [row[k] for k in sorted((k for k in row if k.startswith(f"{prefix}/accept_len_k")),
                                   key=lambda k: int(k[len(f"{prefix}/accept_len_k"):]))]
    out = {
        "step": row["step"] + 1, "split": "train" if prefix == "ttt" else "eval",
        "loss": row["loss"] if prefix == "ttt" else row["eval/loss"],
        "ce": _per_step(row, prefix, "ce"), "top1": _per_step(row, prefix, "top1"),
        "accept_len": row[f"{prefix}/accept_len"], "accept_len_by_k": by_k, "draft_mass": row[f"{prefix}/draft_mass"],
        "tokens": row["tokens"] if prefix == "ttt" else row["eval/tokens"],
    }
    if prefix == "ttt":
        out["lr"] = row.get("lr")
    return out


def read_metrics(path: Union[str, os.PathLike], split: Optional[str] = None) -> list[dict]:
    """The EAGLE-3 rows of a run's ``metrics.jsonl`` (or of the one in a run directory), optionally
    of one ``split``: ``"train"`` (every logged step's batch) or ``"eval"`` (the held-out proxy,
    every ``eval_every`` steps). Each row: ``step`` (optimizer steps done), ``split``, ``loss``,
    ``ce`` and ``top1`` (lists indexed by TTT step), ``accept_len``, ``accept_len_by_k``,
    ``draft_mass``, ``tokens`` (train rows also ``lr``)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        for prefix in ("ttt", "eval"):
            converted = _split_row(row, prefix)
            if converted is not None and (split is None or converted["split"] == split):
                rows.append(converted)
    return rows


def plot_metrics(metrics: Union[str, os.PathLike], png_path: Union[str, os.PathLike], *, split: str = "eval") -> Path:
    """Draw top-1 agreement per TTT step and the greedy acceptance length against training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics, split)
    if not rows:
        raise ConfigError(f"{str(metrics)!r} has no {split!r} rows to plot")
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for j in range(len(rows[0]["top1"])):
        ax1.plot(steps, [r["top1"][j] for r in rows], marker=".", label=f"TTT step {j}")
    ax1.set(xlabel="training step", ylabel="top-1 agreement with the target", ylim=(0, 1.02),
            title=f"EAGLE-3 head ({split})")
    ax1.legend(fontsize=7)
    k = len(rows[0]["top1"])
    ax2.plot(steps, [r["accept_len"] if not math.isnan(r["accept_len"]) else None for r in rows], marker="o")
    ax2.set(xlabel="training step", ylabel=f"greedy acceptance length (k={k}, bonus incl.)", ylim=(1, k + 1.05),
            title="tokens per target forward")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


__all__ = ["Eagle3Options", "Eagle3Result", "eagle3_config", "plot_metrics", "read_metrics", "train_eagle3"]
