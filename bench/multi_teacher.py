"""Routed multi-teacher OPD against either teacher alone, on a two-domain dataset.

Word problems of two domains (``add``/``subtract`` against ``multiply``/``multiply_then_subtract``,
a ``domain`` column). Teacher A is SFT'd on domain A only, teacher B on domain B only: each is
an expert on its half and weak on the other. From one student cold start (SFT on both halves),
three OPD runs of equal length (reverse KL on the teacher's top-32 plus tail, ``teacher_topk``):
routed by the ``domain`` column (``multi_teacher``), teacher A alone, teacher B alone. Prints held-out accuracy per domain and combined, and writes a PNG.

    python bench/multi_teacher.py                    # default size (see --help); run quiet
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_tokenizer import ROOT, sh, task, train  # noqa: E402  (the same helpers)

DOMAINS = {"A": ("add", "subtract"), "B": ("multiply", "multiply_then_subtract")}


def accuracy_by_domain(run: Path, data: Path, n: int) -> dict:
    """Held-out accuracy on each domain's eval rows and on all of them."""
    out = {}
    for name in ("A", "B", "all"):
        cfg = run / f"eval_{name}.toml"
        eval_file = data / ("eval.jsonl" if name == "all" else f"eval_{name}.jsonl")
        opts = task(data)["options"] | {"eval_path": str(eval_file)}
        cfg.write_text("[task]\nname = \"dataset\"\n[task.options]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in opts.items()))
        out[name] = json.loads(sh("eval", str(run), "--config", str(cfg), "-n", str(n), "--json"))["accuracy"]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_multi_teacher")
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--cold-steps", type=int, default=400, help="OPD needs a student that already follows the format")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
    from opdplug_local.wordproblems import generate

    out = ROOT / a.out
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    topics = DOMAINS["A"] + DOMAINS["B"]
    rows = generate(12000, a.seed, topics=topics)
    for r in rows:
        r["domain"] = "A" if r["topic"] in DOMAINS["A"] else "B"
    held = rows[-600:]
    train_rows = rows[:-600]
    write = lambda name, rs: (data / name).write_text("".join(json.dumps(r) + "\n" for r in rs))  # noqa: E731
    write("train.jsonl", train_rows)
    write("eval.jsonl", held)
    for d in DOMAINS:
        write(f"train_{d}.jsonl", [r for r in train_rows if r["domain"] == d])
        write(f"eval_{d}.jsonl", [r for r in held if r["domain"] == d])
    tok = build_bpe_tokenizer([r["prompt"] + "\n" + r["solution"] for r in train_rows[:6000]], vocab_size=800)
    for name, arch, kw in (("teacher-init", "qwen2", dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6)),
                           ("student-init", "llama", dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4))):
        build_model_dir(out / name, arch, tok, num_key_value_heads=2, seed=a.seed, **kw)
    teachers = {d: train(out, f"teacher_{d}", str(out / "teacher-init"), a.teacher_steps, task(data, f"train_{d}.jsonl"))
                for d in DOMAINS}
    cold = train(out, "cold_start", str(out / "student-init"), a.cold_steps, task(data))
    opd = dict(rollout={"sampler": "on_policy", "temperature": 1.0}, loss={"support": "teacher_topk", "divergence": "reverse_kl"})
    runs = {"routed": train(out, "opd_routed", str(cold / "final"), a.steps, task(data), teacher={
        "scorer": "multi_teacher", "top_k": 32, "options": {"router": "column", "router_options": {
            "column": "domain", "routes": {"A": "teacher_A", "B": "teacher_B"}}}},
        teachers=[{"name": f"teacher_{d}", "path": str(teachers[d] / "final")} for d in DOMAINS], **opd)}
    for d in DOMAINS:
        runs[f"teacher {d} alone"] = train(out, f"opd_{d}", str(cold / "final"), a.steps, task(data),
                                           teacher={"path": str(teachers[d] / "final"), "scorer": "local", "top_k": 32},
                                           **opd)
    table = {f"teacher {d}": accuracy_by_domain(teachers[d], data, a.eval_n) for d in DOMAINS}
    table["cold start"] = accuracy_by_domain(cold, data, a.eval_n)
    table.update({f"OPD {k}": accuracy_by_domain(v, data, a.eval_n) for k, v in runs.items()})
    print("| model | domain A | domain B | combined |\n|---|---|---|---|")
    for k, v in table.items():
        print(f"| {k} | {v['A']:.3f} | {v['B']:.3f} | {v['all']:.3f} |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(list(table), [v["all"] for v in table.values()])
    ax.set_ylabel("combined held-out accuracy")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(out / "multi_teacher.png", dpi=120)
    best_single = max(table[f"OPD teacher {d} alone"]["all"] for d in DOMAINS)
    print(f"routed OPD {table['OPD routed']['all']:.3f} combined vs the best single teacher {best_single:.3f}; "
          f"plot {out / 'multi_teacher.png'}")


if __name__ == "__main__":
    main()
