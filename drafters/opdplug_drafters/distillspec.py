"""DistillSpec (Zhou et al. 2024): a standalone drafter distilled from the target by the OPD loop.

Nothing here trains: the drafter is the ``[student]`` of an ordinary opdplug run and the target
its ``[teacher]``. On-policy DistillSpec is ``[rollout] sampler = "on_policy"`` (the drafter
samples, the target scores every token); the off-policy variant is ``sampler = "teacher"`` (the
target's own samples). The divergence is ``[loss] divergence``: ``tvd`` optimizes acceptance
directly (a draft is accepted with probability ``1 - TVD(p, q)``), ``forward_kl``,
``reverse_kl`` and ``jsd`` are the other DistillSpec choices. See ``configs/drafter_*.toml``.

What this module adds, through hooks, when ``[drafter] eval_every > 0``:

* ``opd_configure``: checks the run has a local target, measures the starting drafter;
* ``opd_step_end``: every ``eval_every`` steps (and after the last), exact speculative decoding
  of held-out prompts with the drafter's current weights, at each ``eval_temperatures``; the
  acceptance lengths go into the step's metrics (``drafter/accept_len_T0`` ...) and one row per
  measurement into ``OUTPUT_DIR/drafter_eval.jsonl``, which ``plot_acceptance`` draws.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from opdplug.errors import ConfigError
from opdplug.hookspecs import hookimpl

from .evaluation import evaluate
from .kinds import get_kind
from .standalone import StandaloneDrafter

EVAL_FILE = "drafter_eval.jsonl"
"""One JSON row per acceptance measurement of a DistillSpec run: step, then per temperature."""
SCRATCH = "drafters"
"""This plugin's key in ``ctx.scratch``."""


def _options(ctx):
    return ctx.config.plugins.get("drafter")


def _measuring(ctx) -> bool:
    options = _options(ctx)
    return options is not None and options.kind == "standalone" and options.eval_every > 0


def measure_drafter(ctx, step: int) -> dict:
    """Acceptance of the run's current student as a drafter for its teacher (no timing)."""
    options = _options(ctx)
    drafter = StandaloneDrafter(ctx.student_module(), vocab_size=ctx.teacher.get_output_embeddings().weight.shape[0])
    reports = evaluate(
        ctx.teacher, drafter, ctx.task, eos_id=ctx.tokenizer.eos_token_id, k=options.draft_tokens,
        n_prompts=options.eval_prompts, batch_sizes=(options.eval_batch_size,),
        temperatures=tuple(options.eval_temperatures), time_it=False, check_identity=False, seed=options.eval_seed,
    )
    row: dict[str, Any] = {"step": step, "k": options.draft_tokens}
    for r in reports:
        row[f"T{r.temperature:g}"] = {
            "accept_len": r.acceptance_length, "accept_len_uncut": r.acceptance_length_uncut,
            "position_acceptance": r.position_acceptance, "predicted": r.predicted_position_acceptance,
            "closed_form": r.closed_form_acceptance_length,
        }
    return row


def _write_row(ctx, row: dict) -> None:
    acc = ctx.accelerator
    if acc is not None and not acc.is_main_process:
        return
    out = Path(ctx.config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / EVAL_FILE, "a") as f:
        f.write(json.dumps(row, allow_nan=True) + "\n")


@hookimpl
def opd_configure(ctx) -> None:
    options = _options(ctx)
    if options is None or not options.is_set():
        return
    if getattr(get_kind(ctx.registry, options.kind), "stages", None) is not None:
        return  # the kind's own stages train it in the loop (loop_stages); nothing to measure here
    if options.kind != "standalone":
        raise ConfigError(f"drafter.kind = {options.kind!r} is not trained by the OPD loop; run 'opdplug drafter train CONFIG'")
    if ctx.teacher is None:
        raise ConfigError("drafter.eval_every > 0 measures acceptance against the target: set [teacher] path")
    ctx.scratch[SCRATCH] = {"initial": measure_drafter(ctx, 0), "first_step": None}


@hookimpl
def opd_step_end(ctx, step: int, metrics: dict) -> None:
    if not _measuring(ctx) or SCRATCH not in ctx.scratch:
        return
    state = ctx.scratch[SCRATCH]
    acc = ctx.accelerator
    main = acc is None or acc.is_main_process
    if state["first_step"] is None:
        state["first_step"] = step
        path = Path(ctx.config.run.output_dir) / EVAL_FILE
        if step == 0 and main:  # a fresh run: its starting point, measured before any update
            if path.exists():
                path.unlink()
            _write_row(ctx, state["initial"])
    done = step + 1
    options = _options(ctx)
    if done % options.eval_every and done != ctx.config.run.steps:
        return
    if not main:
        return
    row = measure_drafter(ctx, done)
    _write_row(ctx, row)
    for key, value in row.items():
        if key.startswith("T"):
            metrics[f"drafter/accept_len_{key}"] = value["accept_len"]


def read_eval(run_dir: str | Path) -> list[dict]:
    """The rows of a DistillSpec run's ``drafter_eval.jsonl`` (sorted by step; [] if absent)."""
    path = Path(run_dir) / EVAL_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["step"])


def plot_acceptance(curves: dict[str, list[tuple[int, float]]], png: str | Path, *, k: int, title: str = "") -> Path:
    """Acceptance length (bonus included) against training steps, one line per curve, with the
    limit ``k + 1`` dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in curves.items():
        points = [(s, a) for s, a in points if a is not None and not math.isnan(a)]
        if points:
            ax.plot([s for s, _ in points], [a for _, a in points], marker="o", ms=3, label=name)
    ax.axhline(k + 1, ls="--", color="grey", lw=1, label=f"limit k+1 = {k + 1}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"acceptance length (k = {k}, bonus incl.)")
    ax.set_ylim(0.9, k + 1.2)
    ax.set_title(title or "drafter acceptance on held-out prompts", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def curves_of(rows: list[dict], label: str = "") -> dict[str, list[tuple[int, float]]]:
    """``drafter_eval.jsonl`` rows as one curve per temperature."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("T"):
                name = f"{label} T={key[1:]}".strip()
                curves.setdefault(name, []).append((row["step"], value["accept_len"]))
    return curves


def train_distillspec(config, manager, *, progress_desc: Optional[str] = None):
    """Run the OPD loop on a DistillSpec config, then draw ``acceptance_vs_steps.png`` in the run
    directory from its measurements. Returns the loop's ``TrainResult``."""
    from opdplug.loop import train

    sampler = config.rollout.sampler
    desc = progress_desc or f"DistillSpec ({'on-policy' if sampler == 'on_policy' else sampler}, {config.loss.divergence})"
    result = train(config, manager, progress_desc=desc)
    rows = read_eval(result.output_dir)
    if rows:
        options = config.plugin("drafter")
        plot_acceptance(curves_of(rows), Path(result.output_dir) / "acceptance_vs_steps.png", k=options.draft_tokens,
                        title=f"DistillSpec ({sampler}, {config.loss.divergence}): held-out acceptance")
    return result
