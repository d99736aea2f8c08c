"""The ground of the continual-learning bench (``bench/continual_learning.py``).

* **The behaviour**: SumChain, lengths 2..8, as the demo's teacher does it (cached by
  ``opdplug_local.demo.train_teacher``; 1.000 held-out greedy accuracy). This model is the
  "original weights".
* **The new facts**: ``n`` synthetic facts the original model does not know, in the SumChain
  vocabulary so no tokenizer changes: a prompt of three labels from ``i..p`` (labels a SumChain
  prompt of length <= 8 never uses), e.g. ``k m p =``, whose answer is a random digit written
  ``; 7``. Scored by the ``exact_match`` verifier on the facts themselves (memorisation is the
  point: a fact is learned when it is recalled).

Both metrics are measured the way ``opdplug eval CHECKPOINT --config EVAL.toml`` measures them:
the two eval configs are written beside the runs (``behaviour_eval.toml``, ``facts_eval.toml``).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from opdplug_local.cli import load_for_eval  # noqa: E402
from opdplug_local.demo import DemoRecipe, train_teacher  # noqa: E402
from opdplug_local.evaluate import accuracy_by_length, accuracy_on_eval_split  # noqa: E402
from opdplug.manager import make_plugin_manager  # noqa: E402

FACT_LABELS = tuple("ijklmnop")
"""Labels fact prompts are made of: SumChain prompts of length <= 8 use only a..h."""


def write_facts(path: Path, n: int, seed: int) -> list[dict]:
    """``n`` distinct facts (``{"prompt": "k m p =", "answer": "; 7"}``), deterministic in
    ``seed``, written as JSONL to ``path``."""
    if not 1 <= n <= len(FACT_LABELS) ** 3:
        raise ValueError(f"--facts must be 1..{len(FACT_LABELS) ** 3}, got {n}")
    rng = random.Random(f"continual-facts:{seed}")
    keys: list[tuple] = []
    while len(keys) < n:
        key = tuple(rng.choice(FACT_LABELS) for _ in range(3))
        if key not in keys:
            keys.append(key)
    rows = [{"prompt": " ".join(key) + " =", "answer": f"; {rng.randrange(10)}"} for key in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


FACT_REPEATS = 16
"""Copies of each fact in the SFT file when behaviour traces are mixed in (so the mix can hold
many distinct traces at a small share)."""


def write_sft_data(path: Path, facts: list[dict], behaviour_share: float, seed: int, recipe: DemoRecipe) -> int:
    """The SFT file: the facts alone (``behaviour_share`` 0), or the facts ``FACT_REPEATS`` times
    with SumChain reference traces (training split) making up ``behaviour_share`` of the rows, as
    the Thinking Machines experiment mixed chat data into its documents. Returns the trace count."""
    from opdplug_local.tasks import SumChain

    if not 0.0 <= behaviour_share < 1.0:
        raise ValueError(f"--sft-behaviour-share must be in [0, 1), got {behaviour_share}")
    rows = list(facts)
    traces = 0
    if behaviour_share > 0:
        rows = rows * FACT_REPEATS
        traces = round(len(rows) * behaviour_share / (1 - behaviour_share))
        task = SumChain(min_len=recipe.min_len, max_len=recipe.max_len)
        for p in task.prompts(traces, seed=seed + 500, split="train"):
            digits = p.meta["digits"]
            rows.append({"prompt": " ".join(task.prompt_words(digits)), "answer": " ".join(task.reference_words(digits))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return traces


def facts_task(facts_path: Path, train_path: Path | None = None) -> dict:
    """The ``[task]`` table of the facts: train on ``train_path`` (default: the facts), evaluate
    on the facts, exact match."""
    return {"name": "dataset", "options": {
        "path": str(train_path or facts_path), "eval_path": str(facts_path), "prompt_column": "prompt", "answer_column": "answer",
        "template": "raw", "verifier": "exact_match", "max_new_tokens": 3 * recipe_max_len() + 3}}


def recipe_max_len() -> int:
    """The longest SumChain the ground uses (a mixed SFT file holds its traces)."""
    return DemoRecipe().max_len


def behaviour_task(recipe: DemoRecipe) -> dict:
    """The ``[task]`` table of the behaviour: SumChain at the demo's lengths."""
    return {"name": "sumchain", "options": {"min_len": recipe.min_len, "max_len": recipe.max_len}}


def _toml_task(task: dict) -> str:
    """A ``[task]`` table as TOML (strings, ints and floats only: what the two tasks hold)."""
    lines = ["[task]", f"name = {json.dumps(task['name'])}", "", "[task.options]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in task["options"].items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Ground:
    """The original model and the two measurements of any model, run or checkpoint directory."""

    original_dir: Path
    """The original weights (the demo's SumChain teacher)."""
    behaviour: dict
    """``[task]`` of the behaviour (SumChain)."""
    facts: dict
    """``[task]`` of the new facts (the evaluation; ``sft`` is what stage 1 trains on)."""
    sft: dict
    """``[task]`` of the SFT run: the facts, maybe mixed with behaviour traces."""
    behaviour_traces: int
    """SumChain traces mixed into the SFT file (0: facts alone)."""
    behaviour_eval: Path
    """``opdplug eval --config`` file of the behaviour."""
    facts_eval: Path
    """``opdplug eval --config`` file of the facts."""
    lengths: tuple
    """SumChain lengths the behaviour is measured at."""
    eval_n: int
    """Held-out SumChain prompts per length."""

    def measure(self, path: Path) -> dict:
        """``{"behaviour": mean held-out SumChain accuracy over the lengths, "facts": fraction of
        facts recalled exactly}`` of a model, run or checkpoint directory, greedy."""
        manager = make_plugin_manager()
        model, tokenizer, task = load_for_eval(Path(path), "sumchain", manager, config_path=str(self.behaviour_eval))
        by_length = accuracy_by_length(model, tokenizer, task, list(self.lengths), n=self.eval_n)
        model, tokenizer, task = load_for_eval(Path(path), "dataset", manager, config_path=str(self.facts_eval))
        facts, _ = accuracy_on_eval_split(model, tokenizer, task)
        return {"behaviour": sum(by_length.values()) / len(by_length), "facts": facts,
                "behaviour_by_length": {str(k): v for k, v in by_length.items()}}


def build_ground(work: Path, n_facts: int, seed: int, eval_n: int, recipe: DemoRecipe,
                 behaviour_share: float = 0.0) -> Ground:
    """The original model (``recipe``'s demo teacher, cached), ``n_facts`` facts of ``seed``, the
    SFT file (``behaviour_share`` of it SumChain traces) and the two eval configs under ``work``."""
    facts_path, sft_path = work / "facts.jsonl", work / "sft.jsonl"
    rows = write_facts(facts_path, n_facts, seed)
    traces = write_sft_data(sft_path, rows, behaviour_share, seed, recipe)
    original = train_teacher(recipe)
    behaviour, facts = behaviour_task(recipe), facts_task(facts_path)
    behaviour_eval, facts_eval = work / "behaviour_eval.toml", work / "facts_eval.toml"
    behaviour_eval.write_text(_toml_task(behaviour))
    facts_eval.write_text(_toml_task(facts))
    return Ground(original, behaviour, facts, facts_task(facts_path, sft_path), traces, behaviour_eval, facts_eval,
                  tuple(range(recipe.min_len, recipe.max_len + 1)), eval_n)
