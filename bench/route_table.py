"""The route table: from one SFT-plateau checkpoint, what each route buys and at what compute.

For each ground (SumChain at its longest trained length T = 8; the arithmetic word-problem
dataset), a student is first SFT'd for ``--plateau-steps`` (the shared checkpoint; its curve is
printed, so whether it plateaued is measured, not assumed). From that checkpoint, for the same
steps and batch rows:

* **SFT**: more SFT (teacher samples on SumChain, reference solutions on the word problems);
* **RL**: GRPO, ``samples_per_prompt`` completions per prompt, outcome reward from the task's
  verifier, group-normalised advantage (``credit.scheme = "grpo"``), no teacher;
* **OPD**: reverse KL to the teacher on the full vocabulary, on student rollouts;
* **RL+OPD**: GRPO plus the teacher's per-token log-ratio as dense shaping
  (``grpo_teacher_shaping``, weight ``--shaping``).

RL runs ``--rl-steps`` (default 4x ``--steps``: it needs no teacher, so a step costs less) at
``--rl-lr-scale`` times the learning rate; every route reads another prompt stream than the shared
checkpoint's SFT (seed + 1000). Every ``--every`` steps a checkpoint is evaluated greedily on
held-out prompts. Compute is
counted from the tokens processed with ``opdplug_local.demo.flops_of_run`` (as ``make demo`` and
``bench/compute_claim.py`` count it: 2N per token for the model that generates, 2N for the
teacher's scoring where a teacher scores, 6N for the student's update), from the shared
checkpoint on. The target is the teacher's accuracy minus ``--target-gap`` (2 points); the
compute to reach it is interpolated linearly between the checkpoints around the first crossing.

    .venv/bin/python bench/route_table.py               # both grounds, default sizes
    .venv/bin/python bench/route_table.py --quick       # SumChain only, smaller (make demo)

On the word problems, ``--plateau-pool N`` makes the shared checkpoint's SFT read only the first N
training rows (a data-limited plateau: with 512 rows it sits at 0.30 from step 400 on), and
``--teacher-steps`` picks how long the cached teacher was SFT'd (1000: 0.48 held-out; 3000: 0.945).

Writes ``route_table.json`` and ``route_table.png`` under ``--out`` (``runs/bench``).
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
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

import route_setups  # noqa: E402
from opdplug_local.demo import flops_of_run  # noqa: E402
from opdplug.loop import train  # noqa: E402

ROUTES = ("SFT", "RL", "OPD", "RL+OPD")


def route_sections(ground, name: str, group: int, shaping: float, overlap_k: int) -> tuple[dict, str, bool]:
    """(config sections, who generates, whether the teacher scores) of route ``name``."""
    rl_loss = {"support": "sampled", "estimator": "k1", "update": "advantage"}
    teacher = {"path": str(ground.teacher_dir), "scorer": "local"}
    if name == "SFT":
        return ground.sft_route, ground.sft_generator, False
    if name == "RL":
        return {"rollout": {"sampler": "on_policy", "samples_per_prompt": group}, "loss": rl_loss,
                "teacher": {"scorer": "none"}, "credit": {"scheme": "grpo", "verifier": "task"}}, "student", False
    if name == "OPD":
        return {"rollout": {"sampler": "on_policy"}, "loss": {"support": "full", "divergence": "reverse_kl", "top_k": overlap_k},
                "teacher": teacher}, "student", True
    if name == "RL+OPD":
        return {"rollout": {"sampler": "on_policy", "samples_per_prompt": group}, "loss": rl_loss, "teacher": teacher,
                "credit": {"scheme": "grpo_teacher_shaping", "options": {"weight": shaping}, "verifier": "task"}}, "student", True
    raise ValueError(name)


def curve_of(ground, run_dir: Path, history: list, params: dict, generator: str, scored: bool, start: dict) -> list:
    """(step, FLOPs since the shared checkpoint, accuracy) of every checkpoint of a run."""
    points = [dict(start, flops=0.0)]
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(ckpt.name.split("-")[1])
        flops = flops_of_run(history[:step], params["student"], params["teacher"], generator, scored)
        points.append({"step": step, "flops": flops, "accuracy": ground.evaluate(ckpt)})
        print(f"  {run_dir.name} step {step}: {flops / 1e9:.1f} GFLOPs, accuracy {points[-1]['accuracy']:.3f}", flush=True)
    return points


def crossing(points: list, target: float):
    """FLOPs (and step) where the curve first reaches ``target``, linear between checkpoints; None if never."""
    for a, b in zip(points, points[1:]):
        if b["accuracy"] >= target:
            if a["accuracy"] >= target:
                return {"flops": a["flops"], "step": a["step"]}
            if b["accuracy"] == a["accuracy"]:
                return {"flops": b["flops"], "step": b["step"]}
            f = (target - a["accuracy"]) / (b["accuracy"] - a["accuracy"])
            return {"flops": a["flops"] + f * (b["flops"] - a["flops"]), "step": b["step"]}
    return {"flops": 0.0, "step": 0} if points and points[0]["accuracy"] >= target else None


def shared_checkpoint(ground, args, work: Path) -> dict:
    """SFT from the ground's initial student for ``args.plateau_steps`` (seed ``args.seed``),
    evaluated every ``args.plateau_every``: the checkpoint every route starts from."""
    plateau_dir = work / "plateau"
    student = dict(ground.student_start)
    if "init_seed" in student:
        student["init_seed"] += args.seed
    pool = getattr(args, "plateau_pool", 0)
    try:
        limited = ground.pool_sections(work, pool) if pool else {}
    except ValueError as e:
        sys.exit(f"route_table: {e}")
    config, manager = ground.config(
        plateau_dir, run={"steps": args.plateau_steps, "batch_size": args.batch, "lr": ground.plateau_lr, "seed": args.seed,
                          "checkpoint_every": args.plateau_every, "keep_checkpoints": 1000},
        student=student, **ground.sft_route, **limited)
    plateau = train(config, manager, progress_desc=f"{ground.name}: shared SFT checkpoint")
    start_dir = plateau.final_model_dir
    params = {"student": route_setups.params_of(start_dir), "teacher": route_setups.params_of(ground.teacher_dir)}
    init = {"step": 0, "accuracy": ground.evaluate(Path(student["path"])) if "path" in student else None}
    curve = curve_of(ground, plateau_dir, plateau.history, params, ground.sft_generator, False, init)
    return {"dir": start_dir, "params": params, "curve": curve, "accuracy": curve[-1]["accuracy"]}


def run_route(ground, name: str, sections: dict, generator: str, scored: bool, steps: int, every: int, batch: int,
              seed: int, work: Path, shared: dict, target: float, lr: float | None = None) -> dict:
    """Train route ``name`` from the shared checkpoint and evaluate its checkpoints. The routes
    read another prompt stream than the shared checkpoint's SFT (seed + 1000): more SFT is more
    data, not a second epoch of the same."""
    run_dir = work / name.lower().replace("+", "_").replace(" ", "_")
    config, manager = ground.config(
        run_dir, run={"steps": steps, "batch_size": batch, "lr": lr or ground.plateau_lr, "seed": seed + 1000,
                      "checkpoint_every": every, "keep_checkpoints": 1000},
        student={"path": str(shared["dir"])}, **sections)
    tr = time.perf_counter()
    run = train(config, manager, progress_desc=f"{ground.name}: {name}")
    train_s = time.perf_counter() - tr
    points = curve_of(ground, run_dir, run.history, shared["params"], generator, scored,
                      {"step": 0, "accuracy": shared["accuracy"]})
    overlap = [m.get("topk_overlap") for m in run.history]
    return {"points": points, "train_seconds": train_s, "generator": generator, "teacher_scores": scored,
            "reach": crossing(points, target), "topk_overlap": overlap if any(v is not None for v in overlap) else None,
            "reward": [m.get("rollout/reward") for m in run.history]}


def run_ground(ground, args, work: Path) -> dict:
    t0 = time.perf_counter()
    teacher_acc = ground.evaluate(ground.teacher_dir)
    print(f"[{ground.name}] teacher accuracy {teacher_acc:.3f}", flush=True)
    shared = shared_checkpoint(ground, args, work)
    params, plateau_curve, start_acc = shared["params"], shared["curve"], shared["accuracy"]
    target = teacher_acc - args.target_gap
    print(f"[{ground.name}] shared checkpoint: {start_acc:.3f} after {args.plateau_steps} SFT steps; target {target:.3f}", flush=True)
    routes = {}
    for name in args.routes.split(","):
        sections, generator, scored = route_sections(ground, name, args.group, args.shaping, args.overlap_k)
        steps, every = (args.rl_steps, args.rl_every) if name == "RL" else (args.steps, args.every)
        lr = ground.plateau_lr * (args.rl_lr_scale if name in ("RL", "RL+OPD") else 1.0)
        routes[name] = run_route(ground, name, sections, generator, scored, steps, every, args.batch, args.seed,
                                 work, shared, target, lr)
    return {"label": ground.label, "teacher_accuracy": teacher_acc, "target": target, "params": params,
            "plateau": plateau_curve, "routes": routes, "seconds": time.perf_counter() - t0}


def headline(name: str, res: dict) -> str:
    """``OPD reached the target at N.NNx of RL's compute (...)``, or what happened instead."""
    r = res["routes"]
    if not {"OPD", "RL", "SFT"} <= set(r):
        return f"(no headline for {name}: it needs the SFT, RL and OPD routes; ran {', '.join(r)})"
    opd, rl, sft = r["OPD"]["reach"], r["RL"]["reach"], r["SFT"]["reach"]
    where = f"{name}, target {res['target']:.3f}"
    spent_rl = r["RL"]["points"][-1]["flops"]
    if opd is None:
        return f"OPD did not reach the target within {r['OPD']['points'][-1]['flops'] / 1e9:.1f} GFLOPs ({where})"
    sft_part = ("SFT did not reach it" if sft is None else f"{opd['flops'] / max(sft['flops'], 1):.2f}x of more SFT's")
    if rl is None:
        return (f"OPD reached the target at <= {opd['flops'] / spent_rl:.2f}x of RL's compute ({where}: OPD "
                f"{opd['flops'] / 1e9:.1f} GFLOPs; RL did not reach it within {spent_rl / 1e9:.1f}; {sft_part})")
    return (f"OPD reached the target at {opd['flops'] / max(rl['flops'], 1):.2f}x of RL's compute ({where}: OPD "
            f"{opd['flops'] / 1e9:.1f} GFLOPs, RL {rl['flops'] / 1e9:.1f}; {sft_part})")


LEVELS = (0.25, 0.5, 0.75, 1.0)
"""Fractions of the way from the shared checkpoint's accuracy to the target at which every route's
compute is read: a route that never reaches the target may still be compared on the way to it."""


def levels_of(res: dict) -> list:
    """Per level (a fraction of the checkpoint-to-target gap): the accuracy, each route's GFLOPs to
    reach it (None: not within its run), and OPD's compute as a multiple of RL's and of more SFT's
    (an upper bound, "<=", where RL never reached it: its whole spend is the denominator)."""
    start = res["plateau"][-1]["accuracy"]
    rows = []
    for f in LEVELS:
        level = start + f * (res["target"] - start)
        reach = {name: crossing(c["points"], level) for name, c in res["routes"].items()}
        row = {"fraction": f, "accuracy": level,
               "gflops": {n: (r["flops"] / 1e9 if r else None) for n, r in reach.items()}}
        opd, rl, sft = reach.get("OPD"), reach.get("RL"), reach.get("SFT")
        if opd and "RL" in res["routes"]:
            rl_flops = rl["flops"] if rl else res["routes"]["RL"]["points"][-1]["flops"]
            row["opd_over_rl"] = {"ratio": opd["flops"] / max(rl_flops, 1.0), "bound": rl is None}
        if opd and sft:
            row["opd_over_sft"] = opd["flops"] / max(sft["flops"], 1.0)
        rows.append(row)
    return rows


def print_levels(res: dict) -> None:
    names = list(res["routes"])
    print("GFLOPs to reach each level on the way to the target (-: not within the run)")
    print(f"{'level':<14}" + "".join(f"{n:>10}" for n in names) + f"{'OPD/RL':>10}{'OPD/SFT':>10}")
    for row in res["levels"]:
        cells = "".join(f"{row['gflops'][n]:>10.1f}" if row["gflops"][n] is not None else f"{'-':>10}" for n in names)
        r = row.get("opd_over_rl")
        rl = f"{'<=' if r['bound'] else ''}{r['ratio']:.2f}" if r else "-"
        sft = f"{row['opd_over_sft']:.2f}" if "opd_over_sft" in row else "-"
        print(f"{int(row['fraction'] * 100):>3}% {row['accuracy']:.3f}    " + cells + f"{rl:>10}{sft:>10}")


def print_table(name: str, res: dict) -> None:
    print(f"\n{res['label']}: teacher {res['teacher_accuracy']:.3f}, target {res['target']:.3f}; params teacher "
          f"{res['params']['teacher']:,}, student {res['params']['student']:,}")
    print("shared checkpoint (SFT): " + ", ".join(f"step {p['step']} {p['accuracy']:.3f}" for p in res["plateau"] if p["accuracy"] is not None))
    print(f"{'route':<8}{'final acc':>10}{'GFLOPs spent':>14}{'GFLOPs to target':>18}{'x RL':>8}{'train s':>9}")
    rl = res["routes"].get("RL", {}).get("reach")
    for route, c in res["routes"].items():
        reach = c["reach"]
        to = f"{reach['flops'] / 1e9:.1f}" if reach else "not reached"
        ratio = f"{reach['flops'] / rl['flops']:.2f}" if reach and rl and rl["flops"] > 0 else "-"
        print(f"{route:<8}{c['points'][-1]['accuracy']:>10.3f}{c['points'][-1]['flops'] / 1e9:>14.1f}{to:>18}{ratio:>8}{c['train_seconds']:>9.0f}")
    if res.get("levels"):
        print_levels(res)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grounds", default="sumchain,wordproblems", help="comma-separated: sumchain, wordproblems")
    ap.add_argument("--quick", action="store_true", help="SumChain only, fewer steps (what make demo shows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plateau-steps", type=int, default=None, help="SFT steps of the shared checkpoint")
    ap.add_argument("--plateau-every", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps of each route")
    ap.add_argument("--every", type=int, default=None, help="evaluate a checkpoint every this many steps")
    ap.add_argument("--rl-steps", type=int, default=None, help="steps of RL (cheaper per step: no teacher; default 4x --steps)")
    ap.add_argument("--rl-every", type=int, default=None, help="RL's evaluation interval (default 4x --every)")
    ap.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset of " + ", ".join(ROUTES))
    ap.add_argument("--rl-lr-scale", type=float, default=1.0, help="RL and RL+OPD learning rate as a multiple of the others'")
    ap.add_argument("--overlap-k", type=int, default=4, help="k of the top-k overlap the OPD route logs")
    ap.add_argument("--batch", type=int, default=32, help="rows per step (RL: batch / group prompts)")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt of RL and RL+OPD")
    ap.add_argument("--shaping", type=float, default=1.0, help="weight of the teacher log-ratio in RL+OPD")
    ap.add_argument("--plateau-pool", type=int, default=None,
                    help="word problems: the shared checkpoint's SFT reads only the first N training rows (0: the whole stream)")
    ap.add_argument("--teacher-steps", type=int, default=None, help="word problems: SFT steps of the (cached) teacher")
    ap.add_argument("--target-gap", type=float, default=0.02, help="target = teacher accuracy minus this")
    ap.add_argument("--length", type=int, default=8, help="SumChain's evaluated length T")
    ap.add_argument("--eval-n", type=int, default=None, help="held-out prompts per evaluation")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared or loaded machine 2 threads ran 50x slower)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args(argv)
    if args.quick:
        args.grounds = "sumchain"
    defaults = dict(plateau_pool=0, teacher_steps=route_setups.WORDPROBLEM_TEACHER_STEPS,
                    plateau_steps=150 if args.quick else 200, plateau_every=50, steps=150 if args.quick else 300,
                    every=25 if args.quick else 50, eval_n=100 if args.quick else 200)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.rl_steps = args.rl_steps or 4 * args.steps
    args.rl_every = args.rl_every or 4 * args.every
    grounds = [g.strip() for g in args.grounds.split(",") if g.strip()]
    unknown = [g for g in grounds if g not in ("sumchain", "wordproblems")]
    unknown += [r for r in args.routes.split(",") if r not in ROUTES]
    if args.plateau_pool and "sumchain" in grounds:
        sys.exit("route_table: --plateau-pool needs a ground with a data file (wordproblems); SumChain generates its prompts")
    if args.plateau_pool < 0 or args.teacher_steps < 1:
        sys.exit("route_table: --plateau-pool must be >= 0 and --teacher-steps >= 1")
    if unknown or args.batch % args.group or args.steps % args.every or args.rl_steps % args.rl_every:
        sys.exit(f"route_table: {'unknown ground or route ' + unknown[0] if unknown else '--batch must be a multiple of --group, --steps of --every, --rl-steps of --rl-every'}")
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = {}
    for g in grounds:
        ground = route_setups.sumchain(args.length, args.eval_n, args.threads) if g == "sumchain" else \
            route_setups.wordproblems(args.eval_n, args.threads, args.teacher_steps)
        work = out / "route_table" / f"{g}-seed{args.seed}"
        if work.exists():
            shutil.rmtree(work)
        results[g] = run_ground(ground, args, work)
        results[g]["levels"] = levels_of(results[g])
    lines = []
    for g, res in results.items():
        print_table(g, res)
        lines.append(headline(g, res))
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    stem = f"route_table{'_quick' if args.quick else ''}_seed{args.seed}"
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "results": results, "headlines": lines,
                                                  "wall_seconds": wall}, indent=1))
    import route_plot

    route_plot.plot(results, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')} ({wall:.0f} s)")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
