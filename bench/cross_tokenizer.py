"""Learning across model families: a teacher with one tokenizer distills a student with another.

Two byte-level BPE tokenizers are trained locally on different text, with different vocabulary
sizes and different chat templates (the teacher's Llama-3 style, the student's ChatML). On a
built-in task with a verifier (``--ground``):

* ``sumchain`` (default): SumChain written as text (``opdplug_local.sumchain_text``: "alpha 3 3
  bravo 5 8 ... ; 8", lengths 2..8), verifier ``final_number`` after ``;``. The teacher's tokenizer
  learns from the solutions (every label one token), the student's from English word problems and
  100 prompts (the later labels and " ;" split into pieces), so the two cut the text differently;
* ``wordproblems``: the arithmetic word-problem dataset (verifier: the final number).

1. the teacher (Qwen2 architecture, its tokenizer) is SFT'd on the worked solutions;
2. the student (Llama architecture, the other tokenizer) gets a short SFT cold start;
3. from that cold start, routes at equal teacher work (the same number of completions):
   * OPD through the ``cross_tokenizer`` scorer with the ``xtok_project`` support (the teacher's
     top-k re-expressed over the student's vocabulary), one route per ``--divergences``: the
     generalized JSD (beta 0.5) and reverse KL by default;
   * with ``--sampled``, also OPD with the per-chunk sampled k2 estimator (the reverse-KL
     gradient on the sampled tokens only);
   * sequence-level distillation: SFT on the teacher's own decoded answers (one per prompt).

Prints held-out accuracy of each, the share of the gap between the cold start and the teacher
that each route closes, the alignment statistics, and writes a PNG.

    python bench/cross_tokenizer.py                  # SumChain, default size (see --help); run quiet
    python bench/cross_tokenizer.py --ground wordproblems
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from opdplug.config import dump_toml

ROOT = Path(__file__).resolve().parent.parent


def sh(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "opdplug.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"opdplug {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


@dataclass(frozen=True)
class Ground:
    """A task the bench runs on: its data, the two tokenizers' corpora, sizes and budgets."""

    name: str
    verifier_options: dict
    """Options of ``final_number`` (SumChain: the number after ``;``)."""
    max_new_tokens: int
    """Completion budget (in the student's tokens, which are the finer ones here)."""
    teacher_size: dict
    student_size: dict
    teacher_steps: int
    cold_steps: int
    """Steps of the cold start (SFT on the reference solutions), or its first checkpoint (below)."""
    cold_schedule: str
    cold_accuracy: float
    """With a constant schedule: go on in steps of 50 (up to 3x ``cold_steps``) until the held-out
    accuracy reaches this. SumChain's student "clicks" (learns the lookup) somewhere between steps
    300 and 600 depending on the seed, and can sit for hundreds of steps in a partial solution
    (T = 2 and 8 right, 3 to 7 wrong: 0.23-0.30) that neither OPD nor SFT on the teacher's text
    left within 300 steps; OPD, like the Thinking Machines recipe, starts from a student that
    already follows the teacher's pattern. 0: exactly ``cold_steps``."""
    steps: int
    lr: float
    """Learning rate of OPD and of sequence-level KD (the same for both)."""
    eval_n: int


GROUNDS = {
    "sumchain": Ground("sumchain", {"marker": ";"}, 64, dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4),
                       dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4), 600, 400, "constant", 0.4, 300, 1e-3, 400),
    "wordproblems": Ground("wordproblems", {}, 32, dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6),
                           dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4), 800, 400, "cosine", 0.0, 800, 1e-3, 300),
}


def build_ground(ground: Ground, out: Path, seed: int) -> tuple[Path, list[str], list[str]]:
    """(data directory, the teacher's tokenizer corpus, the student's) of ``ground``."""
    from opdplug_local.sumchain_text import write_sumchain_text
    from opdplug_local.wordproblems import write_jsonl

    data = out / "data"
    write_jsonl(out / "english", 12000, seed, eval_fraction=0.05)
    english = [json.loads(line) for line in (out / "english" / "train.jsonl").read_text().splitlines()]
    if ground.name == "wordproblems":
        shutil.copytree(out / "english", data, dirs_exist_ok=True)
        return data, [r["solution"] for r in english[:6000]], [r["prompt"] for r in english[6000:]] + [r["answer"] for r in english[6000:]]
    write_sumchain_text(data, 20000, 500, seed)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    # The teacher's tokenizer sees the solutions (each label becomes one token); the student's sees
    # English word problems and 100 prompts, so the rarer later labels and " ;" stay in pieces.
    teacher_corpus = [r["solution"] for r in rows[:3000]] + [r["solution"] for r in english[:2000]]
    student_corpus = [r["prompt"] + " " + r["answer"] for r in english[6000:]] + [r["prompt"] for r in rows[3000:3100]]
    return data, teacher_corpus, student_corpus


def task(ground: Ground, data: Path, train_file: str = "train.jsonl", completion: str = "solution") -> dict:
    return {"name": "dataset", "options": {
        "path": str(data / train_file), "eval_path": str(data / "eval.jsonl"), "prompt_column": "prompt",
        "answer_column": "answer", "completion_column": completion, "verifier": "final_number",
        "verifier_options": ground.verifier_options, "max_new_tokens": ground.max_new_tokens}}


THREADS = 1
"""Torch threads per run: one, so that runs on a shared 2-core machine do not oversubscribe it
(a run at the default thread count was 14x slower per step under load than at one)."""


def train(out: Path, name: str, model: str, steps: int, tsk: dict, reuse: bool = False, lr: float = 2e-3,
          schedule: str = "cosine", seed: int = 0, resume: bool = False, every: int = 0, **sections) -> Path:
    """Train run ``name`` through ``opdplug train`` (``reuse``: keep a finished run of that name);
    SFT on the task's completion column unless ``sections`` say otherwise."""
    if reuse and (out / name / "final" / "config.json").is_file():
        print(f"[{name}] reused", flush=True)
        return out / name
    cfg = {"run": {"output_dir": str(out / name), "steps": steps, "batch_size": 32, "lr": lr, "warmup_steps": 20,
                   "lr_schedule": schedule, "checkpoint_every": every or max(steps, 1), "progress": True,
                   "threads": THREADS, "resume": resume, "seed": seed},
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


def cold_start(out: Path, ground: Ground, a, tsk: dict) -> tuple[Path, int]:
    """The student's cold start, SFT on the reference solutions: ``a.cold_steps``, or with
    ``ground.cold_accuracy`` on, resumed 50 steps at a time until its held-out accuracy reaches it."""
    if not ground.cold_accuracy:
        return train(out, "cold_start", str(out / "student-init"), a.cold_steps, tsk, a.reuse,
                     schedule=ground.cold_schedule, seed=a.seed), a.cold_steps
    record = out / "cold_start.json"
    if a.reuse and record.is_file() and (out / "cold_start" / "final" / "config.json").is_file():
        steps = json.loads(record.read_text())["steps"]
        print(f"[cold_start] reused ({steps} steps)", flush=True)
        return out / "cold_start", steps
    steps = a.cold_steps
    while True:  # a constant schedule: resuming for 50 more steps is the same run as one that long
        run = train(out, "cold_start", str(out / "student-init"), steps, tsk, schedule=ground.cold_schedule,
                    seed=a.seed, resume=steps > a.cold_steps, every=50)
        acc = accuracy(run, a.eval_n)
        print(f"[cold_start] {steps} steps: held-out accuracy {acc:.3f}", flush=True)
        if acc >= ground.cold_accuracy or steps >= 3 * a.cold_steps:
            record.write_text(json.dumps({"steps": steps, "accuracy": acc}))
            return run, steps
        steps += 50


def metric_means(run: Path, keys: tuple[str, ...], first: int = 20) -> dict:
    """Mean of each metric over a run's first ``first`` logged steps and its last ``first``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for k in keys:
        v = [r[k] for r in rows if k in r]
        if v:
            out[k] = (sum(v[:first]) / len(v[:first]), sum(v[-first:]) / len(v[-first:]))
    return out


def accuracy(run: Path, n: int) -> float:
    return json.loads(sh("eval", str(run), "-n", str(n), "--json"))["accuracy"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ground", choices=sorted(GROUNDS), default="sumchain")
    p.add_argument("--out", default=None, help="default runs/bench_cross_tokenizer[_GROUND]")
    p.add_argument("--teacher-steps", type=int, default=None, help="teacher SFT steps (more: a stronger teacher)")
    p.add_argument("--cold-steps", type=int, default=None, help="OPD needs a student that already follows the format")
    p.add_argument("--steps", type=int, default=None, help="OPD steps; sequence-level KD gets the same completions")
    p.add_argument("--lr", type=float, default=None, help="learning rate of OPD and of sequence-level KD")
    p.add_argument("--eval-n", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--divergences", default="jsd,reverse_kl",
                   help="OPD routes with xtok_project, one per divergence (jsd: beta 0.5); the first is the headline")
    p.add_argument("--sampled", action="store_true", help="also run OPD with the sampled-token k2 estimator")
    p.add_argument("--reuse", action="store_true", help="keep runs already finished under --out (teacher, cold start, ...)")
    a = p.parse_args(argv)
    ground = GROUNDS[a.ground]
    if not [d for d in a.divergences.split(",") if d.strip()]:
        p.error("--divergences needs at least one divergence, e.g. jsd or reverse_kl")
    for k in ("teacher_steps", "cold_steps", "steps", "eval_n"):
        if getattr(a, k) is None:
            setattr(a, k, getattr(ground, k))
    lr = a.lr or ground.lr
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir

    out = ROOT / (a.out or ("runs/bench_cross_tokenizer" + ("" if a.ground == "wordproblems" else f"_{a.ground}")))
    data, teacher_corpus, student_corpus = build_ground(ground, out, a.seed)
    teacher_tok = build_bpe_tokenizer(teacher_corpus, vocab_size=900, template="llama3")
    student_tok = build_bpe_tokenizer(student_corpus, vocab_size=600, template="chatml")
    if not (a.reuse and (out / "teacher-init" / "config.json").is_file()):
        build_model_dir(out / "teacher-init", "qwen2", teacher_tok, num_key_value_heads=2, seed=a.seed, **ground.teacher_size)
        build_model_dir(out / "student-init", "llama", student_tok, num_key_value_heads=2, seed=a.seed + 1, **ground.student_size)
    tsk = task(ground, data)
    teacher = train(out, "teacher", str(out / "teacher-init"), a.teacher_steps, tsk, a.reuse, seed=a.seed)
    cold, cold_steps = cold_start(out, ground, a, tsk)
    opd_runs = {}
    divergences = [d.strip() for d in a.divergences.split(",") if d.strip()]
    routes = {f"opd_project_{d}": {"support": "xtok_project", "divergence": d,
                                    **({"divergence_options": {"beta": 0.5}} if d == "jsd" else {})} for d in divergences}
    if a.sampled:
        routes["opd_sampled_k2"] = {"support": "sampled", "estimator": "k2"}
    for name, loss in routes.items():
        opd_runs[name] = train(
            out, name, str(cold / "final"), a.steps, tsk, a.reuse, lr=lr, seed=a.seed,
            teacher={"path": str(teacher / "final"), "scorer": "cross_tokenizer", "top_k": 32},
            rollout={"sampler": "on_policy", "temperature": 1.0}, loss=loss)
    # Sequence-level KD: the teacher answers each training prompt once (as many completions as OPD scored).
    n_completions = a.steps * 32
    samples = data / "teacher_samples.jsonl"
    if not (a.reuse and (out / "seq_kd" / "final" / "config.json").is_file()):
        sh("generate", str(teacher), "--split", "train", "-n", str(n_completions), "--temperature", "1.0",
           "--out", str(samples), "--seed", str(a.seed))
        kd_rows = []
        for line in samples.read_text().splitlines():
            r = json.loads(line)
            user = r["meta"]["chat_messages"][-1]["content"]
            kd_rows.append({"prompt": user, "answer": r["meta"]["answer"], "solution": r["completion"]})
        (data / "teacher_kd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kd_rows))
    kd = train(out, "seq_kd", str(cold / "final"), a.steps, task(ground, data, "teacher_kd.jsonl"), a.reuse, lr=lr,
               seed=a.seed)
    acc = {name: accuracy(run, a.eval_n) for name, run in
           [("teacher", teacher), ("cold_start", cold), *opd_runs.items(), ("seq_kd", kd)]}
    gap = acc["teacher"] - acc["cold_start"]
    closed = {k: (acc[k] - acc["cold_start"]) / gap if gap > 0 else float("nan") for k in [*opd_runs, "seq_kd"]}
    keys = ("reverse_kl", "xtok/one_to_one", "xtok/mean_chunk_tokens", "xtok/vocab_overlap", "xtok/rows_skipped")
    stats = {k: metric_means(run, keys) for k, run in opd_runs.items()}
    for k, m in stats.items():
        print(f"{k}: " + ", ".join(f"{key} {first:.3f} -> {last:.3f}" for key, (first, last) in m.items())
              + " (first -> last 20 steps)")
    print("| model | held-out accuracy | gap closed |\n|---|---|---|")
    for k, v in acc.items():
        print(f"| {k} | {v:.3f} | {closed[k]:.0%} |" if k in closed else f"| {k} | {v:.3f} | |")
    print(f"cold start: {cold_steps} SFT steps")
    (out / "cross_tokenizer.json").write_text(json.dumps({"args": vars(a), "cold_steps": cold_steps, "accuracy": acc,
                                                          "gap_closed": closed,
                                                          "opd_metrics": stats}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(list(acc), list(acc.values()), color=["grey", "lightgrey"] + ["tab:blue"] * len(opd_runs) + ["tab:orange"])
    ax.tick_params(axis="x", labelrotation=20)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"teacher of another tokenizer family ({a.ground})")
    fig.tight_layout()
    fig.savefig(out / "cross_tokenizer.png", dpi=120)
    head = f"opd_project_{divergences[0]}"
    print(f"cross-tokenizer OPD ({head}) closed {closed[head]:.0%} of the gap (sequence-level KD: {closed['seq_kd']:.0%}) "
          f"at {n_completions} teacher-scored completions each ({a.ground}); plot {out / 'cross_tokenizer.png'}")


if __name__ == "__main__":
    main()
