"""The main job (``make demo``): off-policy vs on-policy distillation on the built-in task.

1. Build a tiny teacher and train it on SumChain reference traces (cached after the first run).
2. Give a several-times-smaller student a short off-policy cold start (SFT on teacher samples).
3. From that same student, distill two ways for the same number of steps and batch size:
   off-policy (SFT on teacher samples, ``nll``) and on-policy (reverse KL on student rollouts,
   full vocabulary). Both count their FLOPs (teacher + student, forward and backward).
4. Evaluate teacher and students by sequence length T on held-out prompts; print a table and
   write ``accuracy_vs_T.png`` and ``results.json``.

Everything is built locally; nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import models as local, tiny
from opdplug.config import parse_config
from .evaluate import accuracy_by_length
from opdplug.loop import build_task, train
from opdplug.manager import make_plugin_manager
from .modelcache import cached_model


@dataclass(frozen=True)
class DemoRecipe:
    """Sizes and budgets of the demo (``quick`` shrinks them for tests)."""

    teacher_steps: int = 500
    """Supervised steps of the teacher on reference traces (100% held-out accuracy by ~400)."""
    teacher_lr: float = 1e-3
    teacher_batch: int = 64
    cold_start_steps: int = 250
    """Off-policy SFT steps both students start from (OPD, as in the Thinking Machines recipe,
    starts from a student that already follows the teacher's format; from a student at chance,
    reverse KL stalls on this task, see the README)."""
    distill_steps: int = 250
    """Steps of each distillation branch (equal for both)."""
    distill_batch: int = 32
    student_lr: float = 1e-3
    min_len: int = 2
    max_len: int = 8
    """Training lengths of the task (the models do not generalize past max_len)."""
    eval_lengths: tuple = (2, 3, 4, 5, 6, 7, 8)
    eval_n: int = 200
    threads: int = 2


QUICK = DemoRecipe(
    teacher_steps=30, teacher_batch=16, cold_start_steps=4, distill_steps=6, distill_batch=8,
    max_len=4, eval_lengths=(2, 4), eval_n=20,
)


def demo_config(recipe: DemoRecipe, output_dir: Path, **sections):
    """``(config, manager)`` for a run on the demo's task (``recipe``'s lengths and threads), with
    every installed plugin loaded and ``sections`` merged in (benchmarks use it too)."""
    manager = make_plugin_manager()
    base = {
        "run": {"output_dir": str(output_dir), "seed": 0, "threads": recipe.threads, "resume": False, "log_every": 1},
        "task": {"name": "sumchain", "options": {"min_len": recipe.min_len, "max_len": recipe.max_len}},
    }
    for name, table in sections.items():
        base.setdefault(name, {}).update(table)
    return parse_config(base, manager.plugin_tables()), manager


def train_teacher(recipe: DemoRecipe) -> Path:
    """The demo teacher, trained once per recipe and cached (atomically) by ``modelcache.cached_model``."""
    key = hashlib.sha256(json.dumps([dataclasses.asdict(recipe)[k] for k in ("teacher_steps", "teacher_lr", "teacher_batch", "min_len", "max_len")]).encode()).hexdigest()[:12]

    def build(work: Path) -> Path:
        config, manager = demo_config(
            recipe, work,
            run={"steps": recipe.teacher_steps, "batch_size": recipe.teacher_batch, "lr": recipe.teacher_lr,
                 "warmup_steps": 50, "lr_schedule": "cosine", "min_lr_ratio": 0.1, "adam_betas": [0.9, 0.98],
                 "weight_decay": 0.01},
            student={"tiny": "teacher", "init_seed": 1},
            teacher={"scorer": "none"},
            rollout={"sampler": "reference"},
            loss={"support": "sampled", "estimator": "nll"},
        )
        return train(config, manager, progress_desc="teacher (supervised)").final_model_dir

    target, built = cached_model(f"sumchain-teacher-{key}", build)
    if not built:
        print(f"teacher: cached at {target}")
    return target


def cold_start(recipe: DemoRecipe, output_dir: Path, teacher_dir: Path):
    """The off-policy cold start every student begins from: SFT on teacher samples."""
    config, manager = demo_config(
        recipe, output_dir,
        run={"steps": recipe.cold_start_steps, "batch_size": recipe.distill_batch, "lr": recipe.student_lr},
        student={"tiny": "student", "init_seed": 2},
        rollout={"sampler": "teacher", "temperature": 1.0},
        loss={"support": "sampled", "estimator": "nll"},
        teacher={"path": str(teacher_dir), "scorer": "none"},
    )
    return train(config, manager, progress_desc="student cold start (SFT)")


def flops_of_run(history: list, student_params: int, teacher_params: int, generator: str,
                 teacher_scores: bool | None = None) -> float:
    """FLOPs of a distillation run, counted from the tokens it processed (2N per token forward,
    6N per token trained): the generating model's forward over every sequence token
    (``generator`` "teacher" or "student"; "reference": dataset text, nobody generates), the
    teacher's scoring forward (``teacher_scores``; default: on-policy only, off-policy SFT
    needs no scores, RL from a verifier passes False), and the student's training
    forward+backward."""
    if generator not in ("teacher", "student", "reference"):
        raise ValueError(f"generator must be teacher, student or reference, got {generator!r}")
    scored = generator == "student" if teacher_scores is None else teacher_scores
    gen = {"teacher": teacher_params, "student": student_params, "reference": 0}[generator]
    total = 0.0
    for m in history:
        seq = m["rollout/sequence_tokens_total"]
        total += 2 * gen * seq + 6 * student_params * seq
        if scored:
            total += 2 * teacher_params * seq
    return total


def run_demo(output_dir: Path, quick: bool = False) -> dict:
    recipe = QUICK if quick else DemoRecipe()
    torch.set_num_threads(recipe.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher_dir = train_teacher(recipe)
    # a copy beside the run, so configs/ can point at runs/demo/teacher
    if (output_dir / "teacher").exists():
        shutil.rmtree(output_dir / "teacher")
    shutil.copytree(teacher_dir, output_dir / "teacher")
    teacher_model = local.load_model(str(teacher_dir), "teacher")

    cold = cold_start(recipe, output_dir / "cold_start", teacher_dir)

    branches = {
        "SFT (off-policy)": dict(rollout={"sampler": "teacher"}, loss={"support": "sampled", "estimator": "nll"},
                                 teacher={"path": str(teacher_dir), "scorer": "none"}, generator="teacher"),
        "OPD (on-policy, reverse KL)": dict(rollout={"sampler": "on_policy"}, loss={"support": "full", "divergence": "reverse_kl"},
                                            teacher={"path": str(teacher_dir), "scorer": "local"}, generator="student"),
    }
    results: dict = {"recipe": dataclasses.asdict(recipe), "teacher_dir": str(teacher_dir), "methods": {}}
    student_params = tiny.count_parameters(local.load_model(str(cold.final_model_dir), "cold start"))
    teacher_params = tiny.count_parameters(teacher_model)
    cold_flops = flops_of_run(cold.history, student_params, teacher_params, "teacher")
    for name, spec in branches.items():
        spec = dict(spec)
        generator = spec.pop("generator")
        slug = "sft" if generator == "teacher" else "opd"
        config, manager = demo_config(
            recipe, output_dir / slug,
            run={"steps": recipe.distill_steps, "batch_size": recipe.distill_batch, "lr": recipe.student_lr},
            student={"path": str(cold.final_model_dir)},
            **spec,
        )
        run = train(config, manager, progress_desc=name)
        results["methods"][name] = {
            "model_dir": str(run.final_model_dir),
            "flops": cold_flops + flops_of_run(run.history, student_params, teacher_params, generator),
            "train_seconds": sum(m["time/step_s"] for m in run.history),
        }

    tokenizer = local.load_tokenizer(str(teacher_dir))
    task = build_task(manager.registry, "sumchain", {"min_len": recipe.min_len, "max_len": recipe.max_len}, tokenizer)
    evals = {"teacher": teacher_model, "student after cold start": local.load_model(str(cold.final_model_dir), "cold")}
    for name, info in results["methods"].items():
        evals[name] = local.load_model(info["model_dir"], name)
    accuracy = {}
    for name, model in evals.items():
        accuracy[name] = accuracy_by_length(model, tokenizer, task, recipe.eval_lengths, n=recipe.eval_n, progress=True)
    results["accuracy"] = {k: {str(T): a for T, a in v.items()} for k, v in accuracy.items()}
    results["params"] = {"teacher": teacher_params, "student": student_params}
    results["wall_seconds"] = time.perf_counter() - t0

    print_table(results, recipe)
    plot(results, recipe, output_dir / "accuracy_vs_T.png")
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {output_dir / 'accuracy_vs_T.png'} and {output_dir / 'results.json'} ({results['wall_seconds']:.0f} s)")
    return results


def print_table(results: dict, recipe: DemoRecipe) -> None:
    lengths = [str(T) for T in recipe.eval_lengths]
    name_w = max(len(n) for n in results["accuracy"]) + 2
    print()
    print(f"params: teacher {results['params']['teacher']:,}, student {results['params']['student']:,}")
    print("accuracy on held-out prompts by sequence length T (greedy)")
    print(f"{'model':<{name_w}}" + "".join(f"T={T:<6}" for T in lengths) + "  GFLOPs")
    for name, acc in results["accuracy"].items():
        flops = results["methods"].get(name, {}).get("flops")
        cost = f"{flops / 1e9:8.1f}" if flops else ""
        print(f"{name:<{name_w}}" + "".join(f"{acc[T]:<8.3f}" for T in lengths) + cost)


def plot(results: dict, recipe: DemoRecipe, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, acc in results["accuracy"].items():
        xs = [int(T) for T in acc]
        style = "--" if name == "teacher" else "-"
        ax.plot(xs, [acc[str(T)] for T in xs], style, marker="o", label=name)
    ax.set_xticks(list(recipe.eval_lengths))
    ax.set_xlabel("sequence length T (reasoning steps)")
    ax.set_ylabel("accuracy (held-out)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("SumChain: off-policy SFT vs on-policy distillation\n(same steps, batch and start; FLOPs in results.json)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
