"""The built-in target: a deep tiny Llama that opdplug trains itself on SumChain, cached by recipe.

Speculative decoding pays off when a target forward costs several drafter forwards. On a CPU,
a decode step of these tiny models costs about the same per LAYER whatever the width (operator
dispatch, not arithmetic: ~0.5-0.7 ms per layer per step on the 2-core machine, plus ~0.5 ms per
forward), so the target is deep and narrow: 12 layers of hidden 64 (0.8M parameters), 6x the
layers and parameters of the 2-layer DistillSpec drafter, and narrow enough to train in minutes
(a 4-layer target made a 2-layer drafter's round cost as much as three target steps).

``build_target(TargetRecipe())`` trains it on SumChain reference traces with
``opdplug.loop.train`` (supervised, ``sampler = "reference"``, ``estimator = "nll"``), exactly
as ``make demo`` trains its teacher, and caches the result under ``$OPDPLUG_CACHE_DIR``
(default ``~/.cache/opdplug``) as ``drafter-target-KEY``, KEY a hash of the recipe's training
fields; it is built in a private directory and moved into place with one atomic rename. Its
held-out greedy accuracy by chain length is written beside the weights (``target_eval.json``).
(The demo's own teacher, 2 layers, is too shallow to be worth drafting for.)
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from opdplug_local.modelcache import cache_dir, cached_model, recipe_key

RECIPE_VERSION = 1
"""Part of the cache key: bump when the training code changes what a recipe produces."""
NOT_TRAINING_FIELDS = ("eval_lengths", "eval_n", "threads")
"""Recipe fields that do not change the weights (not part of the cache key)."""


@dataclass(frozen=True)
class TargetRecipe:
    """How to build and train the built-in target (see ``QUICK`` for tests)."""

    hidden_size: int = 64
    """Width of the Llama."""
    layers: int = 12
    """Decoder layers: the depth is what makes a forward cost several drafter forwards on a CPU."""
    heads: int = 4
    """Attention heads (also key/value heads)."""
    intermediate_size: int = 256
    """MLP width."""
    init_seed: int = 1
    """Initialisation seed."""
    seed: int = 0
    """Run seed (prompt draws)."""
    steps: int = 400
    """Supervised steps on SumChain reference traces. Measured (this recipe, 600 steps): loss
    0.46 at step 200, 0.012 at 250, < 0.003 from 300; 100% held-out greedy accuracy at T = 2..8.
    (8 layers of hidden 128 at lr 1e-3, batch 32 were still at 0.46 and 10-36% after 400 steps.)"""
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 50
    """Warm-up steps."""
    min_len: int = 2
    """Shortest SumChain chain."""
    max_len: int = 8
    """Longest SumChain chain."""
    eval_lengths: tuple = (2, 4, 6, 8)
    """Chain lengths of the held-out check written to ``target_eval.json``."""
    eval_n: int = 100
    """Held-out prompts per length of that check."""
    threads: int = 1
    """torch threads while training (1: the 2 cores are often shared; 2 threads on a busy machine
    were several times slower per step)."""

    def size(self) -> dict:
        """``LlamaConfig`` keyword arguments (for ``opdplug_local.tiny.build_model``)."""
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.layers, num_attention_heads=self.heads,
                    num_key_value_heads=self.heads, intermediate_size=self.intermediate_size)

    def task_options(self) -> dict:
        """``[task.options]`` of the ``sumchain`` task the target was trained on."""
        return {"min_len": self.min_len, "max_len": self.max_len}

    def key(self) -> str:
        """12 hex digits of SHA-256 over the training fields and ``RECIPE_VERSION``."""
        return recipe_key(self, RECIPE_VERSION, NOT_TRAINING_FIELDS)


QUICK = TargetRecipe(hidden_size=32, layers=2, intermediate_size=64, steps=3, batch_size=4, warmup_steps=1,
                     max_len=4, eval_lengths=(2, 4), eval_n=4)
"""A tiny recipe for tests (seconds; the model learns nothing)."""


def target_path(recipe: TargetRecipe) -> Path:
    """Where ``build_target`` caches this recipe's target (whether built yet or not)."""
    return cache_dir() / f"drafter-target-{recipe.key()}"


def build_target(recipe: TargetRecipe = TargetRecipe(), *, progress: bool = True, verbose: bool = True) -> Path:
    """The recipe's target, trained once and cached (see the module docstring).

    :return: the model directory (``config.json``, weights, tokenizer, ``target_eval.json``).
    """
    from opdplug_local import tiny
    from opdplug.config import parse_config
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager
    from opdplug_local.tasks import SumChain

    measured: dict = {}

    def build(work: Path) -> Path:
        t0 = time.perf_counter()
        tokenizer = tiny.build_tokenizer(SumChain.words())
        tiny.save_pretrained_pair(tiny.build_model(recipe.size(), tokenizer, seed=recipe.init_seed), tokenizer, work / "init")
        manager = make_plugin_manager()
        config = parse_config({
            "run": {"output_dir": str(work / "run"), "seed": recipe.seed, "threads": recipe.threads, "resume": False,
                    "log_every": 25, "progress": progress, "steps": recipe.steps, "batch_size": recipe.batch_size,
                    "lr": recipe.lr, "warmup_steps": min(recipe.warmup_steps, recipe.steps - 1), "lr_schedule": "cosine",
                    "min_lr_ratio": 0.1, "adam_betas": [0.9, 0.98], "weight_decay": 0.01},
            "student": {"path": str(work / "init")},
            "teacher": {"scorer": "none"},
            "task": {"name": "sumchain", "options": recipe.task_options()},
            "rollout": {"sampler": "reference"},
            "loss": {"support": "sampled", "estimator": "nll"},
        }, manager.plugin_tables())
        final = train(config, manager, progress_desc="target (supervised on SumChain)").final_model_dir
        train_seconds = time.perf_counter() - t0
        measured.update(measure_target(final, recipe, progress))
        measured.update({"recipe": dataclasses.asdict(recipe), "key": recipe.key(), "train_seconds": train_seconds})
        (final / "target_eval.json").write_text(json.dumps(measured, indent=1, default=list))
        return final

    target, built = cached_model(target_path(recipe).name, build)
    if verbose and built:
        acc = ", ".join(f"T={t}: {a:.2f}" for t, a in measured["accuracy"].items())
        print(f"target: trained in {measured['train_seconds']:.0f} s, held-out greedy accuracy {acc}; cached at {target}")
    elif verbose:
        print(f"target: cached at {target}")
    return target


def measure_target(model_dir: Path, recipe: TargetRecipe, progress: bool = False) -> dict:
    """Held-out greedy accuracy by chain length and the parameter count of a target directory."""
    from opdplug_local import models as local, tiny
    from opdplug_local.evaluate import accuracy_by_length
    from opdplug_local.tasks import SumChain

    model, tokenizer = local.load_model(str(model_dir), "target"), local.load_tokenizer(str(model_dir))
    task = SumChain(tokenizer, recipe.task_options())
    acc = accuracy_by_length(model, tokenizer, task, list(recipe.eval_lengths), n=recipe.eval_n, progress=progress)
    return {"accuracy": {str(t): a for t, a in acc.items()}, "params": tiny.count_parameters(model)}


def load_measured(model_dir: Path) -> dict:
    """The ``target_eval.json`` written beside a built target ({} if absent)."""
    path = Path(model_dir) / "target_eval.json"
    return json.loads(path.read_text()) if path.is_file() else {}
