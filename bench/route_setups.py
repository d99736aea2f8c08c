"""The two grounds of the route table (``bench/route_table.py``): SumChain at its longest trained
length, and the arithmetic word-problem dataset. Each gives a teacher (built once, cached), a
student to start from, the config sections every route shares, the shared SFT-plateau recipe, the
"more SFT" route's data, and an evaluator of model and checkpoint directories.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from opdplug_local import models as local, tiny  # noqa: E402
from opdplug_local.cli import load_for_eval  # noqa: E402
from opdplug_local.demo import DemoRecipe, train_teacher  # noqa: E402
from opdplug_local.evaluate import accuracy_by_length, accuracy_on_eval_split  # noqa: E402
from opdplug_local.modelcache import cached_model  # noqa: E402
from opdplug.config import parse_config  # noqa: E402
from opdplug.loop import train  # noqa: E402
from opdplug.manager import make_plugin_manager  # noqa: E402


@dataclass(frozen=True)
class Ground:
    """One task a route table runs on."""

    name: str
    """Short name (``sumchain`` or ``wordproblems``)."""
    label: str
    """What the plot and table call it."""
    teacher_dir: Path
    """The teacher's model directory."""
    student_start: dict
    """The ``[student]`` section of the plateau run (a tiny size or an initial model directory)."""
    sections: dict
    """Config sections every run on this ground shares (``[task]``, ``[run]`` threads)."""
    sft_route: dict
    """Sections of "more SFT" (and of the plateau run): teacher samples or reference answers."""
    sft_generator: str
    """Who wrote the SFT data, for the FLOP count: "teacher" or "reference"."""
    plateau_lr: float
    """Learning rate of the plateau SFT and of every route."""
    evaluate: Callable[[Path], float] = field(compare=False)
    """Held-out greedy accuracy of a model, run or checkpoint directory."""
    pool_source: Path | None = None
    """A JSONL file of the task's rows whose first N make the shared checkpoint's limited SFT data
    (``--plateau-pool N``); None where the task generates its prompts (SumChain)."""

    def pool_sections(self, work: Path, n: int) -> dict:
        """Config sections that train on the first ``n`` rows of ``pool_source`` only (written to
        ``work/plateau_pool.jsonl``): the chosen amount of data an SFT plateau is reached on."""
        rows = []
        with open(self.pool_source) as f:
            for line in f:
                if line.strip():
                    rows.append(line.rstrip("\n"))
                if len(rows) == n:
                    break
        if len(rows) < n:
            raise ValueError(f"--plateau-pool {n} asks for more rows than {self.pool_source} has ({len(rows)})")
        work.mkdir(parents=True, exist_ok=True)
        (work / "plateau_pool.jsonl").write_text("\n".join(rows) + "\n")
        task = json.loads(json.dumps(self.sections["task"]))
        task["options"]["path"] = str(work / "plateau_pool.jsonl")
        return {"task": task}

    def config(self, output_dir: Path, **sections):
        """``(config, manager)`` for a run on this ground with ``sections`` merged in."""
        manager = make_plugin_manager()
        data = json.loads(json.dumps(self.sections))
        data.setdefault("run", {}).update({"output_dir": str(output_dir), "resume": False, "log_every": 1})
        for name, table in sections.items():
            data.setdefault(name, {}).update(table)
        return parse_config(data, manager.plugin_tables()), manager


def params_of(path: Path) -> int:
    return tiny.count_parameters(local.load_model(str(path), "model"))


# ----------------------------------------------------------------------------- SumChain
def sumchain(length: int, eval_n: int, threads: int) -> Ground:
    """The demo's teacher (lengths 2..8, cached), a tiny student, evaluated at T = ``length``."""
    recipe = DemoRecipe(threads=threads)
    teacher_dir = train_teacher(recipe)
    manager = make_plugin_manager()
    options = {"min_len": recipe.min_len, "max_len": recipe.max_len}

    def evaluate(path: Path) -> float:
        model, tokenizer, task = load_for_eval(Path(path), "sumchain", manager, options)
        return accuracy_by_length(model, tokenizer, task, [length], n=eval_n)[length]

    return Ground(
        name="sumchain", label=f"SumChain, T={length} (trained on 2..{recipe.max_len})", teacher_dir=teacher_dir,
        student_start={"tiny": "student", "init_seed": 2},
        sections={"run": {"threads": threads}, "task": {"name": "sumchain", "options": options}},
        sft_route={"rollout": {"sampler": "teacher"}, "loss": {"support": "sampled", "estimator": "nll"},
                   "teacher": {"path": str(teacher_dir), "scorer": "none"}},
        sft_generator="teacher", plateau_lr=recipe.student_lr, evaluate=evaluate,
    )


# ----------------------------------------------------------------------------- word problems
WORDPROBLEM_TEACHER_STEPS = 1000
"""SFT steps of the word-problem teacher (the README's example runs 1500 and reaches 0.796; 1000
keeps the bench's first, uncached run shorter: about 4 minutes on 2 quiet cores). Built once, cached."""


def wordproblems_data(root: Path) -> tuple[Path, Path]:
    """The example's data, tokenizer and initial models (``examples/wordproblems/build.py``'s
    recipe, seed 0), built once under ``root``: (data directory, models directory)."""
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
    from opdplug_local.wordproblems import write_jsonl

    data, models = root / "data", root / "models"
    if not (models / "student-init" / "config.json").is_file():
        write_jsonl(data, 20000, 0, eval_fraction=0.025)
        corpus = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
        tokenizer = build_bpe_tokenizer([r["prompt"] + "\n" + r["solution"] for r in corpus], vocab_size=1024)
        build_model_dir(models / "teacher-init", "qwen2", tokenizer, hidden_size=192, num_hidden_layers=4,
                        num_attention_heads=6, num_key_value_heads=2, seed=0)
        build_model_dir(models / "student-init", "llama", tokenizer, hidden_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, seed=1)
    return data, models


def wordproblems(eval_n: int, threads: int, teacher_steps: int = WORDPROBLEM_TEACHER_STEPS) -> Ground:
    """The README's word-problem example: a Qwen2 teacher SFT'd on the solutions for
    ``teacher_steps`` (cached per length), the 5.8x smaller Llama student, more SFT on the reference
    solutions, ``final_number`` verifier."""
    from opdplug_local.modelcache import cache_dir

    data, models = wordproblems_data(cache_dir() / "wordproblems-example-v1")
    task = {"name": "dataset", "options": {
        "path": str(data / "train.jsonl"), "eval_path": str(data / "eval.jsonl"), "prompt_column": "prompt",
        "answer_column": "answer", "completion_column": "solution", "verifier": "final_number", "max_new_tokens": 32}}
    sections = {"run": {"threads": threads}, "task": task}
    reference = {"rollout": {"sampler": "reference"}, "loss": {"support": "sampled", "estimator": "nll"},
                 "teacher": {"scorer": "none"}}

    def build(work: Path) -> Path:
        ground = Ground("wordproblems", "", Path(), {}, sections, reference, "reference", 2e-3, lambda p: 0.0)
        config, manager = ground.config(work, run={"steps": teacher_steps, "batch_size": 32, "lr": 2e-3,
                                                   "warmup_steps": 50, "lr_schedule": "cosine",
                                                   "checkpoint_every": 0},
                                         student={"path": str(models / "teacher-init")}, **reference)
        return train(config, manager, progress_desc="word-problem teacher (SFT)").final_model_dir

    teacher_dir, _ = cached_model(f"wordproblems-teacher-{teacher_steps}-v1", build)
    manager = make_plugin_manager()

    def evaluate(path: Path) -> float:
        model, tokenizer, t = load_for_eval(Path(path), "dataset", manager, task["options"])
        return accuracy_on_eval_split(model, tokenizer, t, n=eval_n)[0]

    return Ground(
        name="wordproblems", label="arithmetic word problems (held-out, final_number)", teacher_dir=teacher_dir,
        student_start={"path": str(models / "student-init")}, sections=sections, sft_route=reference,
        sft_generator="reference", plateau_lr=2e-3, evaluate=evaluate, pool_source=data / "train.jsonl",
    )
