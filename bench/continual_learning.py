"""The continual-learning claim: SFT on new facts erodes a behaviour; on-policy self-distillation
from the original weights (the LoRA adapter switched off) restores it while the facts stay.

Ground (``bench/continual_setup.py``): the original model is the demo's SumChain teacher (the
behaviour: held-out SumChain accuracy, lengths 2..8); the new facts are ``--facts`` synthetic
prompts (``k m p =`` -> ``; 7``) it does not know. Two runs of the core loop, both LoRA on the
same base:

1. **SFT on the facts** (``[student] lora_r``, ``[rollout] sampler = "reference"``, ``estimator =
   "nll"``, ``[teacher] scorer = "none"``), ``--sft-steps``. ``--sft-behaviour-share`` of the
   SFT rows are SumChain traces (default 1%), as the Thinking Machines experiment mixed chat data
   into its documents: with none, SFT wipes the behaviour out and self-distillation takes the facts
   with it (see the README);
2. **self-distillation** (``configs/self_distill_lora.toml``: ``[student] adapter`` = run 1,
   ``[teacher] scorer = "base_model"``, on-policy, full-vocabulary reverse KL) on the behaviour's
   prompts only, ``--distill-steps`` at ``--distill-lr``.

Both metrics are measured (greedy) on the original model, on every checkpoint of both runs and
on their final models: before SFT, after it, and after self-distillation.

    .venv/bin/python bench/continual_learning.py            # seed 0, default size
    .venv/bin/python bench/continual_learning.py --quick    # a smoke-sized run (tests)

Writes ``continual_learning[_quick][_TAG]_seed{N}.json`` and ``.png`` under ``--out`` (``runs/bench``);
the runs and the two eval configs (``opdplug eval RUN --config .../facts_eval.toml``) stay under
``--out``/continual_learning/[quick-][TAG-]seed{N}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

import continual_setup  # noqa: E402
from opdplug_local.demo import QUICK, DemoRecipe  # noqa: E402
from opdplug.config import parse_config  # noqa: E402
from opdplug.errors import ConfigError  # noqa: E402
from opdplug.loop import train  # noqa: E402
from opdplug.manager import make_plugin_manager  # noqa: E402

MLP_AND_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_config(ground, args, output_dir: Path, task: dict, **sections):
    """``(config, manager)`` of one LoRA run on ``ground``'s original weights."""
    manager = make_plugin_manager()
    data = {"run": {"output_dir": str(output_dir), "resume": False, "log_every": 1, "threads": args.threads,
                    "batch_size": args.batch, "keep_checkpoints": 1000},
            "student": {"path": str(ground.original_dir), "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
                        "init_seed": args.seed,
                        "lora_targets": args.lora_targets.split(",")},
            "task": task}
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return parse_config(data, manager.plugin_tables()), manager


def sft_on_facts(ground, args, work: Path):
    """Stage 1: a LoRA adapter SFT'd on the facts' answers."""
    config, manager = run_config(
        ground, args, work / "sft_facts", ground.sft,
        run={"steps": args.sft_steps, "lr": args.sft_lr, "seed": args.seed, "checkpoint_every": args.sft_every},
        teacher={"scorer": "none"}, rollout={"sampler": "reference"},
        loss={"support": "sampled", "estimator": "nll"})
    return train(config, manager, progress_desc="1/2 SFT on the new facts (LoRA)")


def self_distill(ground, args, work: Path, adapter_run: Path):
    """Stage 2: from the SFT adapter, on-policy reverse KL to the original weights (adapter off)
    on the behaviour's prompts."""
    config, manager = run_config(
        ground, args, work / "self_distill", ground.behaviour,
        run={"steps": args.distill_steps, "lr": args.distill_lr, "seed": args.seed + 1000,
             "checkpoint_every": args.distill_every},
        student={"adapter": str(adapter_run)}, teacher={"scorer": "base_model"},
        rollout={"sampler": "on_policy", "temperature": 1.0},
        loss={"support": "full", "divergence": "reverse_kl", "update": "direct"})
    return train(config, manager, progress_desc="2/2 self-distillation from the original weights")


def curve(ground, run_dir: Path, start: dict, label: str) -> list:
    """``start`` then ``{"step", "behaviour", "facts"}`` of every checkpoint of ``run_dir``."""
    points = [dict(start, step=0)]
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        m = ground.measure(ckpt)
        points.append({"step": int(ckpt.name.split("-")[1]), **m})
        print(f"  {label} step {points[-1]['step']}: behaviour {m['behaviour']:.3f}, facts {m['facts']:.3f}", flush=True)
    return points


def verdict(before: dict, after_sft: dict, after_sd: dict, tolerance: float, facts_tolerance: float) -> dict:
    """Whether the claim held: SFT learned facts and eroded the behaviour (by more than
    ``tolerance``), self-distillation won back at least half of what was lost and kept the facts
    within ``facts_tolerance``."""
    lost = before["behaviour"] - after_sft["behaviour"]
    eroded = lost > tolerance
    learned = after_sft["facts"] - before["facts"] > facts_tolerance
    restored = eroded and after_sd["behaviour"] - after_sft["behaviour"] >= lost / 2
    kept = after_sd["facts"] >= after_sft["facts"] - facts_tolerance
    return {"facts_learned": learned, "behaviour_eroded": eroded, "behaviour_restored": restored,
            "facts_kept": kept, "share_restored": (after_sd["behaviour"] - after_sft["behaviour"]) / lost if eroded else None,
            "reproduced": learned and eroded and restored and kept}


def headline(before: dict, after_sft: dict, after_sd: dict, v: dict, args) -> str:
    """One line: the three points and whether the claim reproduced."""
    pts = (f"behaviour {before['behaviour']:.3f} -> {after_sft['behaviour']:.3f} -> {after_sd['behaviour']:.3f}, "
           f"facts {before['facts']:.3f} -> {after_sft['facts']:.3f} -> {after_sd['facts']:.3f} "
           f"(before SFT -> after {args.sft_steps} SFT steps -> after {args.distill_steps} self-distillation steps)")
    if v["reproduced"]:
        return f"Reproduced: self-distillation from the original weights won back {v['share_restored']:.0%} of the behaviour SFT took, facts kept: {pts}"
    why = [k for k in ("facts_learned", "behaviour_eroded", "behaviour_restored", "facts_kept") if not v[k]]
    return f"NOT reproduced ({', '.join('not ' + w.replace('_', ' ') for w in why)}): {pts}"


def print_table(stages: dict) -> None:
    print(f"\n{'point':<34}{'behaviour':>10}{'facts':>8}   behaviour by SumChain length")
    for name, m in stages.items():
        lengths = " ".join(f"{v:.2f}" for v in m["behaviour_by_length"].values())
        print(f"{name:<34}{m['behaviour']:>10.3f}{m['facts']:>8.3f}   {lengths}")


def plot(result: dict, path: Path) -> None:
    """Left: both metrics at the three points. Right: both along the two runs' steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [1.1, 1.1, 0.8]})
    names = list(result["stages"])
    xs = range(len(names))
    for offset, metric, color in ((-0.2, "behaviour", "tab:blue"), (0.2, "facts", "tab:orange")):
        vals = [result["stages"][n][metric] for n in names]
        ax.bar([x + offset for x in xs], vals, width=0.4, color=color, label=metric)
        for x, v in zip(xs, vals):
            ax.text(x + offset, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(list(xs), ["before SFT", "after SFT\n(facts, LoRA)", "after self-distillation\n(base as teacher)"], fontsize=8)
    ax.set_ylim(0, 1.22)
    ax.set_ylabel("greedy accuracy")
    a = result["args"]
    ax.set_title(f"seed {a['seed']}: behaviour = SumChain 2..8, facts = {a['facts']} new facts\n"
                 f"SFT {a['sft_steps']} steps (behaviour share {a['sft_behaviour_share']}), self-distillation "
                 f"{a['distill_steps']} steps at lr {a['distill_lr']}", fontsize=8)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    sft, sd = result["curves"]["sft"], result["curves"]["self_distill"]
    shift = sft[-1]["step"]
    for metric, color in (("behaviour", "tab:blue"), ("facts", "tab:orange")):
        bx.plot([p["step"] for p in sft] + [shift + p["step"] for p in sd], [p[metric] for p in sft + sd],
                marker="o", ms=3, color=color, label=metric)
    bx.axvline(shift, color="black", ls=":", lw=1)
    bx.text(shift, 1.04, " self-distillation starts", fontsize=7)
    bx.set_xlabel("steps (SFT on facts, then self-distillation)")
    bx.set_ylabel("greedy accuracy")
    bx.set_ylim(-0.02, 1.1)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    kl = result["self_distill_loss"]
    cx.plot(range(len(kl)), kl, color="tab:green", lw=1)
    cx.set_yscale("log")
    cx.set_xlabel("self-distillation step")
    cx.set_ylabel("reverse KL to the original weights (loss)")
    cx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="run seed and the facts' seed")
    ap.add_argument("--quick", action="store_true", help="smoke size: few facts and steps (tests)")
    ap.add_argument("--facts", type=int, default=None, help="number of new facts (default 64)")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT steps on the facts (default 200)")
    ap.add_argument("--sft-every", type=int, default=None, help="measure an SFT checkpoint every this many steps")
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--sft-behaviour-share", type=float, default=0.01,
                    help="share of SFT rows that are SumChain reference traces (replay; 0: facts alone)")
    ap.add_argument("--distill-steps", type=int, default=None, help="self-distillation steps (default 100)")
    ap.add_argument("--distill-every", type=int, default=None)
    ap.add_argument("--distill-lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32, help="rows per step of both runs")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--lora-targets", default=",".join(MLP_AND_ATTENTION), help="comma-separated module names")
    ap.add_argument("--eval-n", type=int, default=None, help="held-out SumChain prompts per length (default 100)")
    ap.add_argument("--tolerance", type=float, default=0.02, help="a metric moved if it moved more than this (2 points: 14 of the 700 behaviour prompts)")
    ap.add_argument("--facts-tolerance", type=float, default=0.05,
                    help="facts count as kept if they fell by at most this (5 points: 3 of 64 facts)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--tag", default="", help="a name for a non-default setting: continual_learning_TAG_seedN.json")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args(argv)
    if args.tag and not args.tag.replace("-", "").replace(".", "").isalnum():
        raise ConfigError(f"--tag must be letters, digits, '-' and '.', got {args.tag!r}")
    defaults = dict(facts=8 if args.quick else 64, sft_steps=4 if args.quick else 200, sft_every=2 if args.quick else 50,
                    distill_steps=4 if args.quick else 100, distill_every=2 if args.quick else 10,
                    eval_n=4 if args.quick else 100)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for name in ("facts", "sft_steps", "sft_every", "distill_steps", "distill_every", "eval_n", "batch", "lora_r", "threads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0.0 <= args.sft_behaviour_share < 1.0:
        raise ConfigError(f"--sft-behaviour-share must be in [0, 1), got {args.sft_behaviour_share}")
    if args.facts > len(continual_setup.FACT_LABELS) ** 3:
        raise ConfigError(f"--facts must be at most {len(continual_setup.FACT_LABELS) ** 3} (three of the labels i..p)")
    if args.sft_steps % args.sft_every or args.distill_steps % args.distill_every:
        raise ConfigError("--sft-steps must be a multiple of --sft-every, --distill-steps of --distill-every")
    return args


def main(argv=None) -> dict:
    try:
        args = parse_args(argv)
    except ConfigError as exc:
        sys.exit(f"continual_learning: {exc}")
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    prefix = "".join(f"{t}-" for t in ("quick" if args.quick else "", args.tag) if t)
    work = out / "continual_learning" / f"{prefix}seed{args.seed}"
    if work.exists():
        shutil.rmtree(work)
    try:
        recipe = dataclasses.replace(QUICK if args.quick else DemoRecipe(), threads=args.threads)
        ground = continual_setup.build_ground(work, args.facts, args.seed, args.eval_n, recipe, args.sft_behaviour_share)
    except ValueError as exc:
        sys.exit(f"continual_learning: {exc}")
    before = ground.measure(ground.original_dir)
    print(f"before SFT: behaviour {before['behaviour']:.3f}, facts {before['facts']:.3f}", flush=True)
    sft = sft_on_facts(ground, args, work)
    sft_curve = curve(ground, work / "sft_facts", before, "SFT")
    after_sft = ground.measure(sft.final_model_dir)
    sd = self_distill(ground, args, work, work / "sft_facts")
    sd_curve = curve(ground, work / "self_distill", after_sft, "self-distillation")
    after_sd = ground.measure(sd.final_model_dir)
    stages = {"before SFT (original weights)": before, f"after SFT on facts ({args.sft_steps} steps)": after_sft,
              f"after self-distillation ({args.distill_steps} steps)": after_sd}
    v = verdict(before, after_sft, after_sd, args.tolerance, args.facts_tolerance)
    line = headline(before, after_sft, after_sd, v, args)
    wall = time.perf_counter() - t0
    result = {"args": vars(args), "original": str(ground.original_dir), "stages": stages, "verdict": v, "headline": line,
              "curves": {"sft": sft_curve, "self_distill": sd_curve},
              "sft_loss": [m.get("loss") for m in sft.history], "self_distill_loss": [m.get("loss") for m in sd.history],
              "wall_seconds": wall}
    print_table(stages)
    out.mkdir(parents=True, exist_ok=True)
    stem = "_".join(["continual_learning", *(t for t in ("quick" if args.quick else "", args.tag) if t), f"seed{args.seed}"])
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')} ({wall:.0f} s)")
    print(line)
    return result


if __name__ == "__main__":
    main()
