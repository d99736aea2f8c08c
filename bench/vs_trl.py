"""Performance 1: opdplug vs TRL's two distillation trainers on identical models, data and settings.

Two sizes (``--size``, defaults in ``vs_trl_setup.SIZES``): ``tiny`` distills the demo's
cold-started SumChain student (135k parameters) from its teacher (533k); ``realistic`` distills a
~22M Llama student from a ~88M teacher briefly trained on few-shot word problems, with a 16k
byte-level BPE vocabulary and prompt + completion >= 140 tokens from the dataset task
(``vs_trl_realistic``). At either size three systems distill the same student from the same teacher: opdplug, ``trl.experimental.gkd.GKDTrainer`` ("TRL GKD", key ``trl``) and
``trl.DistillationTrainer`` ("TRL Distillation", key ``distill``). All use the same steps, batch
(one optimizer step = ``--batch`` prompts, one on-policy student completion each, no gradient
accumulation), completion budget (max_new_tokens = DistillationConfig.max_completion_length),
sampling at T 1 with no top-p / top-k, fully on-policy generation (GKD lambda 1) and divergence:
reverse KL (GKD / Distillation beta 1) or JSD (beta 0.5; both TRL trainers define beta the same
way: mixture (1 - beta) p_student + beta p_teacher, beta 1 = KL(student || teacher)); lr 1e-3,
constant schedule (lr per size), AdamW (0.9, 0.999), no weight decay, grad clip 1.0, fp32, no activation
checkpointing (TRL's configs turn it on by default), CPU, 1 thread per worker. The prompts of
step s are the same in all three (opdplug's own per-step SumChain prompts, fed to TRL in order,
unshuffled; DistillationTrainer gets them as plain text that tokenizes to the same ids).

What each does per step: opdplug samples with its own KV-cache sampler, scores with the teacher
and takes the full-vocabulary divergence on the student's logits; GKD generates with HF
``generate`` then runs full student and teacher forwards and ``generalized_jsd_loss`` on the
full logits; Distillation tokenizes the text prompts, generates with HF ``generate``, runs the
student and teacher backbones only and computes the divergence through both lm_heads chunk by
chunk (``ChunkedDivergenceFunction``), a token-mean over completion tokens.

Every run is its own subprocess (peak memory: ``rss_sampler``, the process RSS sampled every 5 ms
from the first training step to the last, the same in every system; nothing subtracted), the systems
alternate in an order rotated every rep (opdplug GKD Distillation; Distillation opdplug GKD; ...),
and each worker times the interval between consecutive optimizer-step ends (dropping the first
``--skip`` steps) and attributes time to phases with light wrappers (generation, teacher forward,
student forward + loss, backward, optimizer incl. clipping, rest). After training, each final
student is evaluated by the SAME function: full-vocabulary reverse KL to the teacher per completion
token on a fixed set of student rollouts (256 held-out prompts, seeded sampler at T = 1), plus
greedy accuracy. The start student gets the same evaluation, and the bench prints whether every
system's KL fell. MFU (``vs_trl_mfu``): the FLOPs an OPD step must do over the step time, per
phase, against the matmul peak measured here at the workers' thread count. A short cProfile run
of each adds the top functions by own time.

    .venv/bin/python bench/vs_trl.py                   # tiny: ~5 min on 2 quiet CPU cores (7 reps x 3 systems x 40 steps)
    .venv/bin/python bench/vs_trl.py --size realistic  # first builds its models (31 min on 2 loaded cores, cached), then 3 reps x 3 systems: ~12 min
    .venv/bin/python bench/vs_trl.py --divergence jsd
Writes runs/bench/vs_trl[_realistic].json and .png; the last printed line is the headline.
The systems' workers are in ``vs_trl_workers.py``; the shared settings, models and evaluation in
``vs_trl_setup.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rss_sampler import METHOD as RSS_METHOD
from vs_trl_mfu import floor_summary, matmul_peak, mfu_summary, param_counts
from vs_trl_setup import BETA, LABELS, LENGTHS, ROOT, SIZES, SYSTEMS, THREADS, evaluate, prepare
from vs_trl_workers import worker


# ----------------------------------------------------------------------------- driver
def spread(xs):
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(round(f * (len(xs) - 1))))]  # noqa: E731
    return {"median": statistics.median(xs), "p10": q(0.1), "p90": q(0.9), "min": xs[0], "max": xs[-1], "n": len(xs)}


def run_worker(a, system, rep, teacher, student, out_dir, steps, cprofile=False) -> dict:
    work = out_dir / "work" / f"{system}-{rep}{'-prof' if cprofile else ''}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res = work / "result.json"
    cmd = [sys.executable, __file__, "--worker", system, "--work", str(work), "--out", str(res),
           "--teacher", teacher, "--student", student, "--steps", str(steps), "--batch", str(a.batch),
           "--max-new-tokens", str(a.max_new_tokens), "--divergence", a.divergence, "--lr", str(a.lr),
           "--seed", str(0 if cprofile else rep), "--size", a.size, "--eval-prompts", str(a.eval_prompts)]
    if cprofile:
        cmd.append("--cprofile")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{system} worker failed (rc {proc.returncode})")
    out = json.loads(res.read_text())
    out["process_s"] = time.perf_counter() - t0
    out["load_average"] = os.getloadavg()  # 1, 5, 15 min, as the run ends (the machine is shared)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--steps", type=int, help="default per size (vs_trl_setup.SIZES)")
    p.add_argument("--batch", type=int)
    p.add_argument("--max-new-tokens", type=int, help="tiny: 27 = 3 T + 3 at T = 8, the longest reference")
    p.add_argument("--divergence", choices=sorted(BETA), default="reverse_kl")
    p.add_argument("--lr", type=float)
    p.add_argument("--reps", type=int, help="rounds of one run per system (order rotated each round)")
    p.add_argument("--skip", type=int, help="first steps of each run left out of the timing")
    p.add_argument("--eval-prompts", type=int, help="held-out prompts of the final evaluation")
    p.add_argument("--profile-steps", type=int, help="steps of the cProfile run per system (0: none)")
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    # worker mode
    p.add_argument("--worker", choices=list(SYSTEMS))
    p.add_argument("--work"), p.add_argument("--out"), p.add_argument("--teacher"), p.add_argument("--student")
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="worker: run seed (prompts, sampling); rep r uses seed r")
    a = p.parse_args()
    for k, v in vars(SIZES[a.size]).items():  # size defaults for what the command line left unset
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.worker:
        a.system = a.worker
        worker(a)
        return

    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "vs_trl" if a.size == "tiny" else f"vs_trl_{a.size}"
    teacher, student = prepare(out_dir, a.size)
    import trl

    models = param_counts(student, teacher)
    load = {"start": os.getloadavg()}
    print(f"size {a.size}: student {models['student']['params'] / 1e6:.2f}M, teacher {models['teacher']['params'] / 1e6:.2f}M "
          f"parameters, vocabulary {models['student']['vocab']}")
    print(f"teacher {teacher}\nstudent {student}\ntrl {trl.__version__}; steps {a.steps}, batch {a.batch}, "
          f"max_new_tokens {a.max_new_tokens}, lambda 1.0, {a.divergence} (GKD/Distillation beta {BETA[a.divergence]}), lr {a.lr}")
    print(f"load average at start (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load['start'])}", flush=True)
    init = evaluate(student, teacher, a.max_new_tokens, a.size, a.eval_prompts)
    print(f"start student: reverse KL {init['reverse_kl']:.4f}, greedy accuracy {init['greedy_accuracy']:.3f}", flush=True)
    peak_rows = a.batch * (160 if a.size != "tiny" else 40)  # about a step's sequence tokens
    peaks = [matmul_peak(models, rows=peak_rows, threads=THREADS)]
    systems = SYSTEMS
    runs = {s: [] for s in systems}
    for rep in range(a.reps):  # rep r: run seed r in every system (same prompts, different draws)
        # rotated order: rep 0 opdplug gkd distill, rep 1 distill opdplug gkd, rep 2 gkd distill opdplug
        order = [systems[(i - rep) % len(systems)] for i in range(len(systems))]
        for s in order:
            r = run_worker(a, s, rep, teacher, student, out_dir, a.steps)
            runs[s].append(r)
            peaks.append(matmul_peak(models, rows=peak_rows, threads=THREADS))  # the machine's speed drifts: sample it between runs
            st = r["step_s"][a.skip:]
            print(f"  rep {rep} {LABELS[s]:16s} median step {statistics.median(st) * 1e3:6.1f} ms  train peak RSS {r['peak_rss_mb']:6.0f} MB  "
                  f"reverse KL {r['eval']['reverse_kl']:.4f}  acc {r['eval']['greedy_accuracy']:.3f}  ({r['process_s']:.0f} s, "
                  f"load {r['load_average'][0]:.1f})", flush=True)
    profiles = ({s: run_worker(a, s, 0, teacher, student, out_dir, a.profile_steps, cprofile=True) for s in systems}
                if a.profile_steps > 0 else {})

    load["end"] = os.getloadavg()
    peaks.append(matmul_peak(models, rows=peak_rows, threads=THREADS))
    peak = max(x["peak_gflops"] for x in peaks)
    summary = {}
    for s in systems:
        steps = [x for r in runs[s] for x in r["step_s"][a.skip:]]
        phase_tot = {}
        for r in runs[s]:
            for k, v in r["phases_s"].items():
                phase_tot[k] = phase_tot.get(k, 0.0) + v
        train_tot = sum(r["train_s"] for r in runs[s])
        phase_tot["rest (loop, data, hooks)"] = train_tot - sum(phase_tot.values())
        summary[s] = {
            "step_s": spread(steps),
            "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs[s]]),
            "reverse_kl": spread([r["eval"]["reverse_kl"] for r in runs[s]]),
            "greedy_accuracy": spread([r["eval"]["greedy_accuracy"] for r in runs[s]]),
            "phase_fraction": {k: v / train_tot for k, v in phase_tot.items()},
            "phase_ms_per_step": {k: 1e3 * v / (a.steps * len(runs[s])) for k, v in phase_tot.items()},
            "rss_at_train_start_mb": spread([r["rss_at_train_start_mb"] for r in runs[s]]),
            "lifetime_max_rss_mb": spread([r["lifetime_max_rss_mb"] for r in runs[s]]),
        }
        summary[s]["mfu"] = mfu_summary(models, runs[s], summary[s]["phase_ms_per_step"], summary[s]["step_s"]["median"], peak)
    floor = floor_summary(models, runs["opdplug"], a.batch, peak, {s: summary[s]["step_s"]["median"] * 1e3 for s in systems})
    o = summary["opdplug"]
    vs = []
    for s in systems[1:]:
        t = summary[s]
        speed = t["step_s"]["median"] / o["step_s"]["median"]
        rss = o["peak_rss_mb"]["median"] / t["peak_rss_mb"]["median"]
        # Each rep runs the systems back to back, so its ratio is the least disturbed by the
        # machine's load drifting between reps.
        per_rep = sorted(statistics.median(rt["step_s"][a.skip:]) / statistics.median(ro["step_s"][a.skip:])
                         for rt, ro in zip(runs[s], runs["opdplug"]))
        t["speedup_per_rep"] = per_rep
        vs.append(f"{speed:.2f}x {'faster' if speed >= 1 else 'slower'} per step (median; per-rep ratios "
                  f"{statistics.median(per_rep):.2f}x median, {per_rep[0]:.2f}-{per_rep[-1]:.2f}x) and {rss:.2f}x the peak RSS of {LABELS[s]}")
    kls = " / ".join(f"{summary[s]['reverse_kl']['median']:.4f}" for s in systems)
    learned = learning_line(summary, runs, init)
    kl_cmp = kl_comparison(runs) if set(systems) == set(SYSTEMS) else {}
    headline = (f"[{a.size}] opdplug is {'; '.join(vs)}; final reverse KL {kls} "
                f"({' / '.join(LABELS[s] for s in systems)}; start {init['reverse_kl']:.4f}); "
                f"step MFU {summary['opdplug']['mfu']['step']['mfu']:.1%} of {peak:.0f} GFLOP/s")

    print("\nwhere the time goes (ms per step, all timed runs; wall time incl. first steps)")
    names = ["generation", "teacher forward", "student fwd + loss", "backward", "optimizer (+clip)", "rest (loop, data, hooks)"]
    print(f"{'phase':26s}" + "".join(f"{LABELS[s]:>18s}" for s in systems))
    for k in names:
        print(f"{k:26s}" + "".join(f"{summary[s]['phase_ms_per_step'].get(k, 0):18.1f}" for s in systems))
    for s in profiles:
        print(f"\ncProfile of {LABELS[s]} ({a.profile_steps} steps), top functions by own time:")
        lines = [ln for ln in profiles[s]["cprofile_tottime"].splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
        print("\n".join(lines[start:start + 9]))

    print_mfu(summary, peaks, models)
    print_floor(floor, peak)
    result = {"settings": {k: getattr(a, k) for k in ("size", "steps", "batch", "max_new_tokens", "divergence", "lr", "reps", "skip", "eval_prompts")}
              | {"lambda": 1.0, "models": models, "matmul_peaks": peaks, "load_average": load, "memory_method": RSS_METHOD,
                 "gkd_beta": BETA[a.divergence], "distillation_beta": BETA[a.divergence],
                 "labels": LABELS, "trl": trl.__version__, "teacher": teacher, "student": student,
                 "threads": THREADS, "lengths": LENGTHS},
              "initial_student": init, "summary": summary,
              "runs": {s: [{k: v for k, v in r.items() if k != "cprofile_tottime"} for r in runs[s]] for s in systems},
              "cprofile": {s: p["cprofile_tottime"] for s, p in profiles.items()}, "learned": learned, "kl_comparison": kl_cmp, "floor": floor, "headline": headline}
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(summary, init, out_dir / f"{stem}.png", a)

    print(f"\nmemory: {RSS_METHOD}")
    print(f"{'system':18s}{'step ms med':>12s}{'p10-p90':>18s}{'train peak MB':>15s}{'at start':>10s}{'rev KL':>9s}{'acc':>7s}{'MFU':>7s}")
    for s in systems:
        x = summary[s]
        print(f"{LABELS[s]:18s}{x['step_s']['median'] * 1e3:12.1f}{x['step_s']['p10'] * 1e3:9.1f}-{x['step_s']['p90'] * 1e3:<8.1f}"
              f"{x['peak_rss_mb']['median']:15.0f}{x['rss_at_train_start_mb']['median']:10.0f}{x['reverse_kl']['median']:9.4f}"
              f"{x['greedy_accuracy']['median']:7.3f}{x['mfu']['step']['mfu']:7.1%}")
    print(f"load average (1, 5, 15 min): start {' '.join(f'{x:.2f}' for x in load['start'])}, end {' '.join(f'{x:.2f}' for x in load['end'])} "
          f"(2 cores; other jobs share them)")
    print(f"(wrote {out_dir / f'{stem}.json'} and {out_dir / f'{stem}.png'})")
    print(learned)
    if kl_cmp:
        print(kl_line(kl_cmp))
    print(headline)


def learning_line(summary, runs, init) -> str:
    """Every system's final KL against the start student's (same evaluation): did each one learn?
    A system learned when its median final KL is below the start and most of its reps are too."""
    start = init["reverse_kl"]
    parts, failed = [], []
    for s in SYSTEMS:
        finals = [r["eval"]["reverse_kl"] for r in runs[s]]
        below = sum(f < start for f in finals)
        med = summary[s]["reverse_kl"]["median"]
        parts.append(f"{LABELS[s]} {start:.3f} -> {med:.3f}, {below}/{len(finals)} reps lower")
        if not (med < start and below * 2 > len(finals)):
            failed.append(LABELS[s])
    if failed:
        return f"NOT every system learned: {', '.join(failed)} did not lower the reverse KL ({'; '.join(parts)})"
    return f"every system learned (reverse KL {'; '.join(parts)})"


def kl_comparison(runs) -> dict:
    """opdplug's final KL against each TRL system's, paired by rep (rep r: seed r, the same prompts in
    every system): the mean difference, its standard error, and whether opdplug's final KL is lower
    or equal within noise (the mean difference below two standard errors) or higher."""
    out = {}
    for s in SYSTEMS[1:]:
        d = [ro["eval"]["reverse_kl"] - rs["eval"]["reverse_kl"] for ro, rs in zip(runs["opdplug"], runs[s])]
        se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("inf")
        mean = statistics.fmean(d)
        verdict = "lower" if mean < -2 * se else ("equal within noise" if mean <= 2 * se else "higher")
        out[s] = {"differences": d, "mean": mean, "stderr": se, "verdict": verdict}
    return out


def kl_line(cmp: dict) -> str:
    return "final KL, opdplug minus each, paired by seed: " + "; ".join(
        f"{LABELS[s]} {c['mean']:+.3f} +- {c['stderr']:.3f} (s.e., {len(c['differences'])} reps): {c['verdict']}"
        for s, c in cmp.items())


def print_mfu(summary, peaks, models) -> None:
    """Per phase: ms per step, achieved GFLOP/s and MFU against the measured matmul peak."""
    peak = max(x["peak_gflops"] for x in peaks)
    print(f"\nMFU against the measured matmul peak {peak:.1f} GFLOP/s ({THREADS} thread, float32, best of "
          + ", ".join(f"{k} {v['gflops']:.0f}" for k, v in max(peaks, key=lambda x: x["peak_gflops"])["per_shape"].items())
          + f"); best of {len(peaks)} measurements (before, between and after the runs), median {statistics.median(x['peak_gflops'] for x in peaks):.1f}")
    print(f"FLOPs as the demo counts them: student {models['student']['params'] / 1e6:.2f}M, teacher "
          f"{models['teacher']['params'] / 1e6:.2f}M parameters; sequence tokens per step (median) "
          + ", ".join(f"{LABELS[s]} {summary[s]['mfu']['seq_tokens_per_step']:.0f}" for s in SYSTEMS))
    print(f"{'phase':26s}" + "".join(f"{LABELS[s] + ' ms / MFU':>28s}" for s in SYSTEMS))
    for k in list(summary["opdplug"]["mfu"]["phases"]) + ["step"]:
        cells = []
        for s in SYSTEMS:
            m = summary[s]["mfu"]["step"] if k == "step" else summary[s]["mfu"]["phases"][k]
            cells.append(f"{m['ms']:14.1f} / " + (f"{m['mfu']:9.1%}" if m["mfu"] is not None else f"{'-':>9s}"))
        print(f"{'whole step (median)' if k == 'step' else k:26s}" + "".join(f"{c:>28s}" for c in cells))
    print(f"{'step, input embedding out':26s}" + "".join(f"{summary[s]['mfu']['step_mfu_no_embedding']:28.1%}" for s in SYSTEMS))


def print_floor(floor: dict, peak: float) -> None:
    """The least arithmetic the step needs at the measured peak, and each system's step against it."""
    if not floor:
        return
    g = floor["gflop"]
    print(f"\nfloor: the step's required arithmetic ({floor['seq_tokens']:.0f} sequence, {floor['completion_tokens']:.0f} "
          f"completion tokens; decoder layers on every token, lm-heads on completion tokens only, causal attention, "
          f"backward = 2 x forward): " + ", ".join(f"{k} {v:.1f}" for k, v in g.items())
          + f" GFLOP, {sum(g.values()):.1f} in all = {floor['floor_ms']:.0f} ms at {peak:.0f} GFLOP/s (a lower bound: "
          "decoding is bound by memory traffic)")
    print("step time over the floor: " + ", ".join(f"{LABELS[s]} {x:.2f}x" for s, x in floor["step_over_floor"].items())
          + "; a step 1.5x faster than "
          + ", ".join(f"{LABELS[s]} would be {x / 1.5:.2f}x the floor" for s, x in floor["step_over_floor"].items() if s != "opdplug")
          + " (below 1.00x: more arithmetic per second than the measured peak allows)")


def plot(summary, init, path, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(SYSTEMS)
    labels = [LABELS[s].replace("TRL ", "TRL\n") for s in systems]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    panels = [("step_s", "ms per step (median, p10-p90)", 1e3), ("peak_rss_mb", "peak RSS over training (MB)", 1.0),
              ("reverse_kl", f"reverse KL after {a.steps} steps", 1.0)]
    ax = axes[3]
    phases = [k for k in summary["opdplug"]["mfu"]["phases"] if summary["opdplug"]["mfu"]["phases"][k]["mfu"] is not None]
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        vals = [100 * (summary[s]["mfu"]["phases"][k]["mfu"] or 0) for k in phases] + [100 * summary[s]["mfu"]["step"]["mfu"]]
        ax.bar([j + i * width for j in range(len(phases) + 1)], vals, width, label=LABELS[s],
               color=["tab:blue", "tab:orange", "tab:green"][i])
    ax.set_xticks([j + width for j in range(len(phases) + 1)])
    ax.set_xticklabels([k.replace(" + loss", "").replace("teacher forward", "teacher") for k in phases] + ["step"], fontsize=7)
    ax.set_title("MFU (% of measured matmul peak)", fontsize=9)
    ax.legend(fontsize=7)
    for ax, (key, title, scale) in zip(axes, panels):
        med = [summary[s][key]["median"] * scale for s in systems]
        lo = [med[i] - summary[s][key]["p10"] * scale for i, s in enumerate(systems)]
        hi = [summary[s][key]["p90"] * scale - med[i] for i, s in enumerate(systems)]
        ax.bar(labels, med, yerr=[lo, hi], color=["tab:blue", "tab:orange", "tab:green"], capsize=4)
        if key == "reverse_kl":
            ax.axhline(init["reverse_kl"], ls="--", color="gray", label="start")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{a.size}: {'SumChain' if a.size == 'tiny' else 'few-shot word problems'}, batch {a.batch}, max_new_tokens {a.max_new_tokens}, lambda 1, {a.divergence}, {THREADS} CPU thread(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
