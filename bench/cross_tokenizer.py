"""Learning across model families: a teacher with one tokenizer distills a student with another.

Two byte-level BPE tokenizers are trained locally on different text, with different vocabulary
sizes and different chat templates (the teacher's Llama-3 style, the student's ChatML). On the
word-problem dataset (verifier: the final number):

1. the teacher (Qwen2 architecture, its tokenizer) is SFT'd on the worked solutions;
2. the student (Llama architecture, the other tokenizer) gets a short SFT cold start;
3. from that cold start, routes at equal teacher work (the same number of completions):
   * OPD through the ``cross_tokenizer`` scorer with the ``xtok_project`` support (reverse KL
     against the teacher's top-k re-expressed over the student's vocabulary);
   * with ``--sampled``, also OPD with the per-chunk sampled k2 estimator (the reverse-KL
     gradient on the sampled tokens only), the route that failed here before ``xtok_project``;
   * sequence-level distillation: SFT on the teacher's own decoded answers (one per prompt).

Prints held-out accuracy of each, the share of the gap between the cold start and the teacher
that each route closes, and writes a PNG.

    python bench/cross_tokenizer.py                  # default size (see --help); run quiet
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from opdplug.config import dump_toml

ROOT = Path(__file__).resolve().parent.parent


def sh(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "opdplug.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"opdplug {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


def task(data: Path, train_file: str = "train.jsonl", completion: str = "solution") -> dict:
    return {"name": "dataset", "options": {
        "path": str(data / train_file), "eval_path": str(data / "eval.jsonl"), "prompt_column": "prompt",
        "answer_column": "answer", "completion_column": completion, "verifier": "final_number", "max_new_tokens": 32}}


THREADS = 1
"""Torch threads per run: one, so that runs on a shared 2-core machine do not oversubscribe it
(a run at the default thread count was 14x slower per step under load than at one)."""


def train(out: Path, name: str, model: str, steps: int, tsk: dict, **sections) -> Path:
    cfg = {"run": {"output_dir": str(out / name), "steps": steps, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20,
                   "lr_schedule": "cosine", "checkpoint_every": max(steps, 1), "progress": True, "threads": THREADS},
           "student": {"path": model}, "task": tsk,
           "teacher": {"scorer": "none"}, "rollout": {"sampler": "reference"},
           "loss": {"support": "sampled", "estimator": "nll"}}
    for k, v in sections.items():
        cfg[k] = v
    path = out / f"{name}.toml"
    path.write_text(dump_toml(cfg))
    print(f"[{name}] {steps} steps", flush=True)
    sh("train", str(path))
    return out / name


def kl_curve(run: Path) -> tuple[float, float]:
    """Mean reverse KL per token over a run's first and last 20 logged steps."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    kl = [r["reverse_kl"] for r in rows if "reverse_kl" in r]
    return sum(kl[:20]) / max(len(kl[:20]), 1), sum(kl[-20:]) / max(len(kl[-20:]), 1)


def accuracy(run: Path, n: int) -> float:
    return json.loads(sh("eval", str(run), "-n", str(n), "--json"))["accuracy"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_cross_tokenizer")
    p.add_argument("--teacher-steps", type=int, default=800, help="more makes a stronger teacher (the ceiling here)")
    p.add_argument("--cold-steps", type=int, default=400, help="OPD needs a student that already follows the format")
    p.add_argument("--steps", type=int, default=800, help="OPD steps; sequence-level KD gets the same completions")
    p.add_argument("--eval-n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampled", action="store_true", help="also run OPD with the sampled-token k2 estimator")
    a = p.parse_args(argv)
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
    from opdplug_local.wordproblems import write_jsonl

    out = ROOT / a.out
    data = out / "data"
    write_jsonl(data, 12000, a.seed, eval_fraction=0.05)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    # Different text for each: the teacher's tokenizer learns from solutions, the student's from
    # prompts and a generic corpus; different sizes, different templates.
    teacher_tok = build_bpe_tokenizer([r["solution"] for r in rows[:6000]], vocab_size=900, template="llama3")
    student_tok = build_bpe_tokenizer([r["prompt"] for r in rows[6000:]] + [r["answer"] for r in rows[6000:]],
                                      vocab_size=600, template="chatml")
    build_model_dir(out / "teacher-init", "qwen2", teacher_tok, hidden_size=192, num_hidden_layers=4,
                    num_attention_heads=6, num_key_value_heads=2, seed=a.seed)
    build_model_dir(out / "student-init", "llama", student_tok, hidden_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, seed=a.seed + 1)
    teacher = train(out, "teacher", str(out / "teacher-init"), a.teacher_steps, task(data))
    cold = train(out, "cold_start", str(out / "student-init"), a.cold_steps, task(data))
    opd_runs = {}
    routes = {"opd_project": {"support": "xtok_project", "divergence": "reverse_kl"}}
    if a.sampled:
        routes["opd_sampled_k2"] = {"support": "sampled", "estimator": "k2"}
    for name, loss in routes.items():
        opd_runs[name] = train(
            out, name, str(cold / "final"), a.steps, task(data),
            teacher={"path": str(teacher / "final"), "scorer": "cross_tokenizer", "top_k": 32},
            rollout={"sampler": "on_policy", "temperature": 1.0}, loss=loss, run={
                "output_dir": str(out / name), "steps": a.steps, "batch_size": 32, "lr": 1e-3, "warmup_steps": 20,
                "lr_schedule": "cosine", "checkpoint_every": a.steps, "progress": True, "threads": THREADS})
    # Sequence-level KD: the teacher answers each training prompt once (as many completions as OPD scored).
    n_completions = a.steps * 32
    sh("generate", str(teacher), "--split", "train", "-n", str(n_completions), "--temperature", "1.0",
       "--out", str(data / "teacher_samples.jsonl"), "--seed", str(a.seed))
    kd_rows = []
    for line in (data / "teacher_samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        user = r["meta"]["chat_messages"][-1]["content"]
        kd_rows.append({"prompt": user, "answer": r["meta"]["answer"], "solution": r["completion"]})
    (data / "teacher_kd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kd_rows))
    kd = train(out, "seq_kd", str(cold / "final"), a.steps, task(data, "teacher_kd.jsonl"))
    acc = {name: accuracy(run, a.eval_n) for name, run in
           [("teacher", teacher), ("cold_start", cold), *opd_runs.items(), ("seq_kd", kd)]}
    gap = acc["teacher"] - acc["cold_start"]
    closed = {k: (acc[k] - acc["cold_start"]) / gap if gap > 0 else float("nan") for k in [*opd_runs, "seq_kd"]}
    kl = {k: kl_curve(run) for k, run in opd_runs.items()}
    for k, (first, last) in kl.items():
        print(f"{k}: reverse KL per token {first:.3f} over the first 20 steps, {last:.3f} over the last 20")
    print("| model | held-out accuracy | gap closed |\n|---|---|---|")
    for k, v in acc.items():
        print(f"| {k} | {v:.3f} | {closed[k]:.0%} |" if k in closed else f"| {k} | {v:.3f} | |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(acc), list(acc.values()), color=["grey", "lightgrey"] + ["tab:blue"] * len(opd_runs) + ["tab:orange"])
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("teacher of another tokenizer family")
    fig.tight_layout()
    fig.savefig(out / "cross_tokenizer.png", dpi=120)
    print(f"cross-tokenizer OPD closed {closed['opd_project']:.0%} of the gap (sequence-level KD: {closed['seq_kd']:.0%}) "
          f"at {n_completions} teacher-scored completions each; plot {out / 'cross_tokenizer.png'}")


if __name__ == "__main__":
    main()
