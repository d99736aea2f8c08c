"""The realistic size of ``vs_trl.py``: a locally trained byte-level BPE vocabulary, few-shot word
problems from the dataset task, a ~22M Llama student and a ~4x larger teacher that has been
briefly trained on the data (so the student has something to learn).

Everything is built here, offline, and cached under ``opdplug_local.modelcache.cache_dir()``
(``~/.cache/opdplug`` unless ``$OPDPLUG_CACHE_DIR``), keyed by a hash of ``RealisticRecipe``:

* tokenizer: ``opdplug.testing.models.build_bpe_tokenizer`` (ChatML template, byte-level BPE of
  ``vocab_size`` tokens) trained on the word problems plus Python's standard-library sources, so
  the merges are those of a general vocabulary, not of a 30-word task;
* data: JSONL rows for the ``dataset`` task. A prompt is ``shots`` solved problems and one to
  solve (a few-shot prompt as GSM8K evaluations use), so prompt + completion is >= 128 tokens;
* teacher: ``teacher_shape`` Llama, trained ``teacher_steps`` steps on whole rows (next-token loss
  on every token: cheaper per useful gradient than completion-only loss on a CPU);
* student: ``student_shape`` Llama, a shorter cold start the same way, so it writes the format
  but is well behind the teacher.

Build cost on this 2-core machine is printed when built (a few minutes, once).
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class RealisticRecipe:
    """What the realistic size's cached tokenizer, data and models are a function of."""

    vocab_size: int = 16384
    corpus_mb: float = 6.0  # of standard-library sources, besides the word problems
    shots: int = 2
    n_train: int = 4000
    n_eval: int = 200
    student_shape: tuple = (("hidden_size", 384), ("num_hidden_layers", 6), ("num_attention_heads", 6),
                            ("num_key_value_heads", 2), ("intermediate_size", 1024))
    teacher_shape: tuple = (("hidden_size", 768), ("num_hidden_layers", 10), ("num_attention_heads", 12),
                            ("num_key_value_heads", 4), ("intermediate_size", 2048))
    teacher_steps: int = 60
    student_steps: int = 15
    pretrain_batch: int = 8
    pretrain_lr: float = 1e-3
    threads: int = 2  # the one-off build may use both cores


RECIPE = RealisticRecipe()
INSTRUCTION = "Solve the last problem the way the examples are solved."


def _key(recipe: RealisticRecipe, *fields: str) -> str:
    import hashlib

    blob = json.dumps({"v": 1, **{f: getattr(recipe, f) for f in fields}}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _corpus(recipe: RealisticRecipe) -> list[str]:
    """Word problems and ~``corpus_mb`` MB of standard-library Python, in a fixed order."""
    import sysconfig

    from opdplug_local import wordproblems

    texts = [f"{r['prompt']} {r['solution']}" for r in wordproblems.generate(20000, seed=7)]
    budget = int(recipe.corpus_mb * 2**20)
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or budget <= 0:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        budget -= len(text)
    return texts


def tokenizer_dir(recipe: RealisticRecipe = RECIPE) -> Path:
    """A cached tokenizer directory (ChatML byte-level BPE of ``vocab_size`` tokens)."""
    from opdplug.testing.models import build_bpe_tokenizer
    from opdplug_local.modelcache import cache_dir

    target = cache_dir() / f"bench-realistic-tokenizer-{_key(recipe, 'vocab_size', 'corpus_mb')}"
    if not (target / "tokenizer.json").is_file():
        t0 = time.perf_counter()
        tok = build_bpe_tokenizer(_corpus(recipe), vocab_size=recipe.vocab_size, template="chatml", model_max_length=4096)
        assert len(tok) >= recipe.vocab_size - 8, f"BPE stopped at {len(tok)} tokens (corpus too small)"
        work = target.with_name(target.name + ".tmp")
        tok.save_pretrained(work)
        work.rename(target)
        print(f"realistic: trained a {len(tok)}-token byte-level BPE in {time.perf_counter() - t0:.0f} s -> {target}", flush=True)
    return target


def _rows(recipe: RealisticRecipe, n: int, split: str, seed: int) -> list[dict]:
    """Few-shot rows: ``shots`` solved training problems, then the problem to solve."""
    from opdplug_local import wordproblems

    targets = wordproblems.generate(n, seed=seed, split=split)
    shots = wordproblems.generate(4 * recipe.shots * 50, seed=seed + 1000, split="train")
    rng = random.Random(seed)
    out = []
    for r in targets:
        ex = rng.sample(shots, recipe.shots)
        demo = "\n\n".join(f"Problem: {e['prompt']}\nSolution: {e['solution']}" for e in ex)
        out.append({"prompt": f"{INSTRUCTION}\n\n{demo}\n\nProblem: {r['prompt']}", "answer": r["answer"],
                    "solution": r["solution"]})
    return out


def data_dir(recipe: RealisticRecipe = RECIPE) -> Path:
    """train.jsonl / eval.jsonl for the dataset task (cached)."""
    from opdplug_local.modelcache import cache_dir

    target = cache_dir() / f"bench-realistic-data-{_key(recipe, 'shots', 'n_train', 'n_eval')}"
    if not (target / "eval.jsonl").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for name, n, split, seed in (("train", recipe.n_train, "train", 0), ("eval", recipe.n_eval, "eval", 1)):
            (target / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(recipe, n, split, seed)))
    return target


def task_options(recipe: RealisticRecipe = RECIPE) -> dict:
    """``[task.options]`` of the dataset task these runs use."""
    d = data_dir(recipe)
    return {"path": str(d / "train.jsonl"), "eval_path": str(d / "eval.jsonl"), "prompt_column": "prompt",
            "answer_column": "answer", "completion_column": "solution", "verifier": "final_number",
            "max_new_tokens": 24, "max_prompt_tokens": 1024}


def _pretrain(model, tok, rows: list[dict], steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """Next-token loss on every token of chat-rendered rows (prompt + solution), AdamW, cosine lr."""
    import math

    import torch

    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["solution"]}],
                                     tokenize=False) for r in rows]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01, fused=True)
    losses = []
    model.train()
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))) * min(1.0, (step + 1) / 5)
        ids = [tok(t)["input_ids"] for t in rng.sample(texts, batch)]
        L = max(map(len, ids))
        x = torch.tensor([s + [pad] * (L - len(s)) for s in ids])
        m = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in ids])
        labels = x.masked_fill(m == 0, -100)
        loss = model(input_ids=x, attention_mask=m, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def model_dir(role: str, recipe: RealisticRecipe = RECIPE) -> Path:
    """The cached, briefly trained ``role`` ("teacher" or "student") model directory."""
    import torch

    from opdplug.testing.models import build_model, save_model_dir
    from opdplug_local.modelcache import cached_model

    tok_path = tokenizer_dir(recipe)
    shape = dict(recipe.teacher_shape if role == "teacher" else recipe.student_shape)
    steps = recipe.teacher_steps if role == "teacher" else recipe.student_steps
    fields = ("vocab_size", "corpus_mb", "shots", "n_train", f"{role}_shape", f"{role}_steps", "pretrain_batch", "pretrain_lr")

    def build(work: Path) -> Path:
        from transformers import AutoTokenizer

        torch.set_num_threads(recipe.threads)
        tok = AutoTokenizer.from_pretrained(tok_path)
        model = build_model("llama", tok, seed={"teacher": 1, "student": 2}[role], **shape)
        rows = [json.loads(x) for x in (data_dir(recipe) / "train.jsonl").read_text().splitlines()]
        t0 = time.perf_counter()
        losses = _pretrain(model, tok, rows, steps, recipe.pretrain_batch, recipe.pretrain_lr, seed=3)
        n = sum(p.numel() for p in model.parameters())
        print(f"realistic {role}: {n / 1e6:.1f}M parameters, {steps} steps in {time.perf_counter() - t0:.0f} s "
              f"({recipe.threads} threads); loss {losses[0]:.2f} -> {sum(losses[-5:]) / 5:.2f}", flush=True)
        out = save_model_dir(model, tok, work / "final")
        (out / "pretrain.json").write_text(json.dumps({"losses": losses, "recipe": dataclasses.asdict(recipe)}))
        return out

    path, _ = cached_model(f"bench-realistic-{role}-{_key(recipe, *fields)}", build)
    return path


def prepare(out_dir: Path, recipe: RealisticRecipe = RECIPE) -> tuple[str, str]:
    """(teacher dir, student dir) of the realistic size, built once and cached."""
    return str(model_dir("teacher", recipe)), str(model_dir("student", recipe))


if __name__ == "__main__":  # build (or find) everything: python bench/vs_trl_realistic.py
    import sys

    sys.path.insert(0, str(ROOT / "integrations" / "local"))
    t, s = prepare(ROOT / "runs" / "bench")
    print(t, s, sep="\n")
