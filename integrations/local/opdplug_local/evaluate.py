"""Task accuracy of a model on held-out prompts (by sequence length T for tasks with lengths),
and completions as rows for ``opdplug generate``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from . import sampling
from .models import pad_id_of, stop_token_ids
from opdplug.context import derive_seed


@torch.no_grad()
def accuracy_by_length(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    lengths: Sequence[int],
    *,
    n: int = 200,
    batch_size: int = 100,
    seed: int = 1234,
    temperature: float = 0.0,
    progress: bool = False,
) -> dict[int, float]:
    """Fraction of ``n`` held-out prompts per length whose completion ``task.verify`` accepts.

    Greedy decoding by default (temperature 0); the eval split never overlaps training prompts.
    """
    model.eval()
    results: dict[int, float] = {}
    # Every length's prompts first: a length the task does not have fails before any output.
    by_length = {T: task.prompts(n, seed=derive_seed(seed, "eval", T), split="eval", length=T) for T in lengths}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * len(lengths), desc="eval", dynamic_ncols=True)
    for T, prompts in by_length.items():
        correct = 0.0
        for start in range(0, n, batch_size):
            chunk = prompts[start : start + batch_size]
            out = sampling.sample(
                model, [list(p.prompt_ids) for p in chunk], max_new_tokens=task.max_new_tokens(T),
                temperature=temperature, eos_id=stop_token_ids(tokenizer, model), pad_id=pad_id_of(tokenizer),
                generator=torch.Generator().manual_seed(derive_seed(seed, T, start)),
            )
            for i, p in enumerate(chunk):
                completion = out.input_ids_B_L[i][out.completion_mask_B_L[i].bool()].tolist()
                correct += task.verify(p, completion)
            if bar is not None:
                bar.update(len(chunk))
        results[T] = correct / n
    if bar is not None:
        bar.close()
    return results


@torch.no_grad()
def complete(model, tokenizer, prompts, *, max_new_tokens, temperature: float, seed: int, start: int = 0):
    """Completion ids of ``prompts`` (one batch), each cut after its first stop id."""
    out = sampling.sample(
        model, [list(p.prompt_ids) for p in prompts], max_new_tokens=max_new_tokens, temperature=temperature,
        eos_id=stop_token_ids(tokenizer, model), pad_id=pad_id_of(tokenizer),
        generator=torch.Generator().manual_seed(derive_seed(seed, "complete", start)),
    )
    return [out.input_ids_B_L[i][out.completion_mask_B_L[i].bool()].tolist() for i in range(len(prompts))], out.truncated_B


def _batches(model, tokenizer, task, prompts, *, temperature, batch_size, seed, progress, desc):
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc=desc, dynamic_ncols=True)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        budget = [task.max_new_tokens(p.meta.get("length", 1)) for p in chunk]
        completions, truncated = complete(model, tokenizer, chunk, max_new_tokens=budget, temperature=temperature,
                                          seed=seed, start=start)
        yield chunk, completions, truncated
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def accuracy_on_eval_split(model, tokenizer, task, *, n: int = 0, temperature: float = 0.0, batch_size: int = 64,
                           seed: int = 1234, progress: bool = False) -> tuple[float, int]:
    """(mean verifier score, prompts scored) over the first ``n`` held-out prompts (all if 0)."""
    prompts = task.prompts(n or task.eval_size() or 1 << 30, seed=seed, split="eval")
    total = 0.0
    for chunk, completions, _ in _batches(model, tokenizer, task, prompts, temperature=temperature,
                                          batch_size=batch_size, seed=seed, progress=progress, desc="eval"):
        total += sum(task.verify(p, c) for p, c in zip(chunk, completions))
    return total / max(len(prompts), 1), len(prompts)


def generate_rows(model, tokenizer, task, prompts, *, temperature: float, batch_size: int, seed: int, progress: bool):
    """One dict per prompt: prompt and completion text, ids, truncation, the verifier's score
    when the task has one, and the row's other columns."""
    for chunk, completions, truncated in _batches(model, tokenizer, task, prompts, temperature=temperature,
                                                  batch_size=batch_size, seed=seed, progress=progress, desc="generate"):
        for p, c, t in zip(chunk, completions, truncated.tolist()):
            text = task.completion_text(c) if hasattr(task, "completion_text") else tokenizer.decode(c, skip_special_tokens=True)
            row = {"prompt": tokenizer.decode(list(p.prompt_ids)), "completion": text,
                   "completion_ids": c, "truncated": bool(t)}
            if getattr(task, "verifier", None) is not None or not hasattr(task, "eval_size"):
                row["reward"] = task.verify(p, c)
            row["meta"] = {k: v for k, v in p.meta.items() if _jsonable(v)}
            yield row


def _jsonable(value) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory from a model dir, a run dir (its ``final/``)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    from opdplug.errors import ConfigError

    raise ConfigError(f"{str(path)!r} is neither a model directory nor a finished run directory (no config.json or final/)")
