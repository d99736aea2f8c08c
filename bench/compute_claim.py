"""The compute claim: student accuracy against total FLOPs, off-policy SFT vs on-policy distillation.

On the built-in SumChain task (lengths 2..8, the demo's teacher), both students start from the
same off-policy cold start (SFT on teacher samples) and then train for the same steps and batch:

* SFT: next-token NLL on teacher samples (``sampler = teacher``, ``estimator = nll``);
* OPD: reverse KL on the full vocabulary on student rollouts (``sampler = on_policy``,
  ``support = full``, local dense teacher).

A checkpoint is written every ``--every`` steps (constant learning rate, so a checkpoint at step k
is exactly a k-step run) and evaluated greedily on held-out prompts at T = 4 and T = 8 (the
two sequence lengths). FLOPs are counted from the tokens processed, not timed, with the convention
of ``opdplug_local.demo.flops_of_run``: 2N per token for the model that generates, 2N for the
teacher's scoring (OPD only), 6N for the student's update; the cold start's FLOPs are included.

Why one training run on lengths 2..8 evaluated at T=4 and T=8, rather than separate runs at fixed
lengths: the teacher is trained on 2..8 (the demo's, cached), one shared cold start serves both
lengths, and a length-restricted cold start this short leaves the student near chance at T=8,
where OPD stalls on this task (README). The FLOPs axis is the same for both lengths.

    .venv/bin/python bench/compute_claim.py        # ~5-8 min on the 2-core CPU

Writes runs/bench/compute_claim.json and runs/bench/compute_claim.png; the run directories are
under runs/bench/compute_claim/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from opdplug_local import models as local, tiny  # noqa: E402
from opdplug_local.cli import load_for_eval  # noqa: E402
from opdplug_local.demo import DemoRecipe, cold_start, demo_config, flops_of_run, train_teacher  # noqa: E402
from opdplug_local.evaluate import accuracy_by_length  # noqa: E402
from opdplug.loop import train  # noqa: E402
from opdplug.manager import make_plugin_manager  # noqa: E402


def interp(xs, ys, x):
    """Piecewise-linear y(x) on increasing xs (None outside the range)."""
    if x < xs[0] or x > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cold-start", type=int, default=250, help="off-policy SFT steps both branches start from")
    ap.add_argument("--steps", type=int, default=300, help="steps of each branch")
    ap.add_argument("--every", type=int, default=50, help="evaluate a checkpoint every this many steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lengths", default="4,8")
    ap.add_argument("--eval-n", type=int, default=200, help="held-out prompts per length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    recipe = DemoRecipe(cold_start_steps=args.cold_start, distill_steps=args.steps, distill_batch=args.batch,
                        threads=args.threads)
    out = Path(args.out)
    work = out / "compute_claim"
    if work.exists():
        shutil.rmtree(work)
    teacher_dir = train_teacher(recipe)  # cached under ~/.cache/opdplug (~75 s the first time)
    teacher_model = local.load_model(str(teacher_dir), "teacher")

    cold = cold_start(recipe, work / "cold_start", teacher_dir)
    student_params = tiny.count_parameters(local.load_model(str(cold.final_model_dir), "cold start"))
    teacher_params = tiny.count_parameters(teacher_model)
    cold_flops = flops_of_run(cold.history, student_params, teacher_params, "teacher")

    model, tokenizer, task = load_for_eval(cold.final_model_dir, "sumchain", make_plugin_manager(), {"min_len": recipe.min_len, "max_len": recipe.max_len})
    acc0 = accuracy_by_length(model, tokenizer, task, lengths, n=args.eval_n)
    print(f"cold start ({args.cold_start} steps): {cold_flops / 1e9:.1f} GFLOPs, accuracy {acc0}", flush=True)

    branches = {
        "SFT": dict(rollout={"sampler": "teacher"}, loss={"support": "sampled", "estimator": "nll"},
                    teacher={"path": str(teacher_dir), "scorer": "none"}, generator="teacher"),
        "OPD": dict(rollout={"sampler": "on_policy"}, loss={"support": "full", "divergence": "reverse_kl"},
                    teacher={"path": str(teacher_dir), "scorer": "local"}, generator="student"),
    }
    curves: dict = {}
    for name, spec in branches.items():
        spec = dict(spec)
        generator = spec.pop("generator")
        config, manager = demo_config(
            recipe, work / name.lower(),
            run={"steps": args.steps, "batch_size": args.batch, "lr": recipe.student_lr,
                 "checkpoint_every": args.every, "keep_checkpoints": 1000},
            student={"path": str(cold.final_model_dir)},
            **spec,
        )
        tb = time.perf_counter()
        run = train(config, manager, progress_desc=name)
        train_s = time.perf_counter() - tb
        points = [{"step": 0, "flops": cold_flops, "accuracy": {str(T): acc0[T] for T in lengths}}]
        for ckpt in sorted((work / name.lower() / "checkpoints").glob("step-*")):
            step = int(ckpt.name.split("-")[1])
            model, tokenizer, task = load_for_eval(ckpt, "sumchain", manager)
            acc = accuracy_by_length(model, tokenizer, task, lengths, n=args.eval_n)
            flops = cold_flops + flops_of_run(run.history[:step], student_params, teacher_params, generator)
            points.append({"step": step, "flops": flops, "accuracy": {str(T): acc[T] for T in lengths}})
            print(f"{name} step {step}: {flops / 1e9:.1f} GFLOPs, accuracy {acc}", flush=True)
        curves[name] = {"points": points, "train_seconds": train_s, "generator": generator}

    # ---------------------------------------------------------------- headline numbers
    summary = {}
    for T in map(str, lengths):
        sft, opd = curves["SFT"]["points"], curves["OPD"]["points"]
        target = sft[-1]["accuracy"][T]
        sft_final = sft[-1]["flops"]
        first = next((p for p in opd if p["accuracy"][T] >= target), None)
        # SFT's first checkpoint reaching its own final accuracy (it may plateau early)
        sft_first = next(p for p in sft if p["accuracy"][T] >= target)
        xs_s, ys_s = [p["flops"] for p in sft], [p["accuracy"][T] for p in sft]
        xs_o, ys_o = [p["flops"] for p in opd], [p["accuracy"][T] for p in opd]
        common_max = min(xs_s[-1], xs_o[-1])
        grid = [p["flops"] for p in sft + opd if p["flops"] <= common_max and p["step"] > 0]
        gaps = [interp(xs_o, ys_o, x) - interp(xs_s, ys_s, x) for x in sorted(set(grid))]
        s = {
            "sft_final_accuracy": target, "sft_final_flops": sft_final,
            "sft_first_reaches_own_final": {"step": sft_first["step"], "flops": sft_first["flops"]},
            "opd_final_accuracy": opd[-1]["accuracy"][T], "opd_final_flops": opd[-1]["flops"],
            "opd_first_match": None if first is None else {
                "step": first["step"], "flops": first["flops"],
                "ratio_total": first["flops"] / sft_final,
                "ratio_branch_only": (first["flops"] - cold_flops) / (sft_final - cold_flops),
            },
            "gap_opd_minus_sft_at_equal_compute": {
                "at_flops": common_max,
                "gap": interp(xs_o, ys_o, common_max) - interp(xs_s, ys_s, common_max),
                "mean_over_checkpoints": sum(gaps) / len(gaps) if gaps else None,
            },
        }
        summary[T] = s

    # ---------------------------------------------------------------- table
    print()
    print(f"params: teacher {teacher_params:,}, student {student_params:,}; cold start {args.cold_start} steps "
          f"({cold_flops / 1e9:.1f} GFLOPs), then {args.steps} steps at batch {args.batch}, eval n={args.eval_n} greedy")
    head = f"{'method':<6}{'step':>6}{'GFLOPs':>10}" + "".join(f"{'acc T=' + str(T):>10}" for T in lengths)
    print(head)
    for name, c in curves.items():
        for p in c["points"]:
            print(f"{name:<6}{p['step']:>6}{p['flops'] / 1e9:>10.1f}" + "".join(f"{p['accuracy'][str(T)]:>10.3f}" for T in lengths))
    for T, s in summary.items():
        g = s["gap_opd_minus_sft_at_equal_compute"]
        gap_mean = f"{g['mean_over_checkpoints']:+.3f}" if g["mean_over_checkpoints"] is not None else "n/a"
        print(f"T={T}: SFT final {s['sft_final_accuracy']:.3f} at {s['sft_final_flops'] / 1e9:.1f} GFLOPs "
              f"(first reached at step {s['sft_first_reaches_own_final']['step']}); OPD final {s['opd_final_accuracy']:.3f} "
              f"at {s['opd_final_flops'] / 1e9:.1f}; OPD - SFT at equal compute ({g['at_flops'] / 1e9:.1f} GFLOPs): "
              f"{g['gap']:+.3f} (mean over checkpoints {gap_mean})")
    parts = []
    for T, s in summary.items():
        m = s["opd_first_match"]
        parts.append(f"T={T}: never within {args.steps} steps" if m is None else
                     f"T={T}: {m['ratio_total']:.2f}x (branch only {m['ratio_branch_only']:.2f}x, OPD step {m['step']})")
    headline = "HEADLINE compute for OPD to first match SFT's final accuracy / SFT's final compute: " + "; ".join(parts)
    print(headline)

    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "compute_claim.json").write_text(json.dumps({
        "recipe": {"cold_start_steps": args.cold_start, "steps": args.steps, "every": args.every, "batch": args.batch,
                   "lr": recipe.student_lr, "train_lengths": [recipe.min_len, recipe.max_len], "eval_lengths": lengths,
                   "eval_n": args.eval_n, "threads": args.threads},
        "params": {"teacher": teacher_params, "student": student_params}, "cold_start_flops": cold_flops,
        "curves": curves, "summary": summary, "headline": headline, "wall_seconds": wall}, indent=1))
    plot(curves, summary, lengths, out / "compute_claim.png")
    print(f"wrote {out / 'compute_claim.json'} and {out / 'compute_claim.png'} ({wall:.0f} s)")


def plot(curves, summary, lengths, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), sharey=True)
    for ax, T in zip(axes, map(str, lengths)):
        for name, c in curves.items():
            ax.plot([p["flops"] / 1e9 for p in c["points"]], [p["accuracy"][T] for p in c["points"]], marker="o",
                    label=f"{name} ({'teacher samples' if name == 'SFT' else 'reverse KL, student rollouts'})")
        ax.axhline(summary[T]["sft_final_accuracy"], color="gray", ls=":", lw=1, label="SFT final accuracy")
        ax.set_xlabel("total GFLOPs (teacher + student, from tokens; cold start included)")
        ax.set_title(f"SumChain, eval at T={T}", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("greedy accuracy (held-out)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
