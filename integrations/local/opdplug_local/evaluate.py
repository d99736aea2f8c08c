"""Task accuracy of a model by sequence length T, on held-out prompts."""
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
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * len(lengths), desc="eval", dynamic_ncols=True)
    for T in lengths:
        prompts = task.prompts(n, seed=derive_seed(seed, "eval", T), split="eval", length=T)
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


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory from a model dir, a run dir (its ``final/``)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    from opdplug.errors import ConfigError

    raise ConfigError(f"{str(path)!r} is neither a model directory nor a finished run directory (no config.json or final/)")
