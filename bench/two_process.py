"""Two-process speed-up: the same global batch trained by 1 process and by 2 (accelerate, gloo DDP).

On the built-in SumChain task (lengths 2..8) with the on-policy sampler, a local dense teacher and
reverse KL on the full vocabulary, one optimizer step of a global batch of ``--global-batch``
sequences is timed

* by one process (``batch_size = G``), launched as ``python -m opdplug.cli train``;
* by two processes (``batch_size = G / 2`` each), launched as ``accelerate launch --multi_gpu
  --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no -m opdplug.cli train``.

Every process uses one torch thread (``run.threads = 1``, ``OMP_NUM_THREADS=1``), so one process
uses one core and two use two. The time of a step is the loop's own ``time/step_s`` (rollout,
scoring, loss, backward, all-reduce, optimizer step); the figure is the median over the steps
after ``--warmup``, pooled over ``--repeats`` runs of each, run alternately (1, 2, 1, 2, ...).
Both see exactly the same prompts and samples (the run is a function of the global batch), which
the table checks through the per-step token counts.

The models are random tiny Llamas built here (``--student`` / ``--teacher`` hidden sizes); the
timing does not need trained ones. Sampling is a Python loop of one forward per generated token
whose overhead does not shrink with the batch: the smaller the per-process work, the further the
speed-up is from 2x.

    .venv/bin/python bench/two_process.py          # ~3 min on the 2-core CPU

Writes runs/bench/two_process.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_models(work: Path, student_hidden: int, teacher_hidden: int) -> tuple[Path, Path]:
    from opdplug_local import tiny
    from opdplug_local.tasks import SumChain

    tok = tiny.build_tokenizer(SumChain().words())
    dirs = []
    for name, hidden, seed in (("student", student_hidden, 2), ("teacher", teacher_hidden, 1)):
        size = dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=4 * hidden)
        tiny.save_pretrained_pair(tiny.build_model(size, tok, seed=seed), tok, work / name)
        dirs.append(work / name)
    return dirs[0], dirs[1]


def launch_line(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def run_once(work: Path, tag: str, processes: int, args, student: Path, teacher: Path) -> list[dict]:
    from opdplug.config import dump_toml

    out = work / tag
    config = {
        "run": {"output_dir": str(out), "steps": args.warmup + args.steps, "batch_size": args.global_batch // processes,
                "lr": 1e-3, "device": "cpu", "threads": 1, "progress": False, "resume": False, "seed": 0},
        "student": {"path": str(student)},
        "teacher": {"path": str(teacher)},
        "task": {"options": {"min_len": 2, "max_len": 8}},
    }
    path = work / f"{tag}.toml"
    path.write_text(dump_toml(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*launch_line(processes), "-m", "opdplug.cli", "train", str(path)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{tag} failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["processes"] == processes for m in lines), f"{tag}: expected world size {processes}"
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--global-batch", type=int, default=64, help="sequences per optimizer step, all processes")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    ap.add_argument("--student", type=int, default=128, help="student hidden size (2 layers)")
    ap.add_argument("--teacher", type=int, default=256, help="teacher hidden size (2 layers)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench" / "two_process"), help="scratch directory")
    args = ap.parse_args()
    if args.global_batch % 2:
        ap.error("--global-batch must be even")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    student, teacher = build_models(work, args.student, args.teacher)

    load_before = os.getloadavg()[0]
    times: dict[int, list[float]] = {1: [], 2: []}
    tokens: dict[int, list[int]] = {}
    wall: dict[int, float] = {1: 0.0, 2: 0.0}
    for r in range(args.repeats):
        for processes in (1, 2):
            t0 = time.perf_counter()
            lines = run_once(work, f"p{processes}_r{r}", processes, args, student, teacher)
            wall[processes] += time.perf_counter() - t0
            times[processes] += [m["time/step_s"] for m in lines[args.warmup:]]
            tokens.setdefault(processes, [m["tokens"] for m in lines])
            print(f"  run {r + 1}/{args.repeats}, {processes} process(es): median step "
                  f"{statistics.median(m['time/step_s'] for m in lines[args.warmup:]):.3f} s", flush=True)

    same = tokens[1] == tokens[2]
    med = {p: statistics.median(t) for p, t in times.items()}
    seq_per_s = {p: args.global_batch / med[p] for p in med}
    print()
    print(f"global batch {args.global_batch}, student hidden {args.student}, teacher hidden {args.teacher}, "
          f"{args.steps} timed steps x {args.repeats} runs each, 1 torch thread per process")
    print(f"same prompts and samples in both (per-step token counts equal): {'yes' if same else 'NO'}")
    # Two processes need both cores: anything else running on the machine eats the speed-up.
    print(f"machine load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")
    print(f"{'processes':>9}  {'batch/process':>13}  {'median step s':>13}  {'IQR s':>13}  {'sequences/s':>11}  {'launch+run s':>12}")
    for p in (1, 2):
        q = statistics.quantiles(times[p], n=4)
        print(f"{p:>9}  {args.global_batch // p:>13}  {med[p]:>13.3f}  {q[0]:>6.3f}-{q[2]:<6.3f}  {seq_per_s[p]:>11.1f}  "
              f"{wall[p] / args.repeats:>12.1f}")
    ratio = med[1] / med[2]
    out = {"args": vars(args), "median_step_s": med, "step_times_s": times, "same_samples": same, "speedup": ratio,
           "load_average_before_after": [load_before, os.getloadavg()[0]]}
    (work.parent / "two_process.json").write_text(json.dumps(out, indent=1))
    print(f"two processes vs one, same global batch: {ratio:.2f}x faster per optimizer step (ideal 2.00x on 2 cores)")


if __name__ == "__main__":
    main()
