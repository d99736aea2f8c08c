"""SumChain as a text dataset, for models with tokenizers of any family.

The built-in ``sumchain`` task speaks in the ids of its own word-level tokenizer. This writes the
same task as JSONL text rows for the ``dataset`` task, so that byte-level BPE models (and two
models whose tokenizers cut the text differently) can learn it with a verifier:

    prompt:    ``alpha 3 bravo 5 charlie 1 delta 7``
    solution:  ``alpha 3 3 bravo 5 8 charlie 1 9 delta 7 6 ; 6``
    answer:    ``6``

Step i writes its label, the digit with that label in the prompt, and the running sum mod 10, as
``SumChain`` does (``echo_digits``). Labels are words by default (``WORD_LABELS``), so that BPE
tokenizers trained on different text split them differently. Verify with ``final_number`` and
``verifier_options = {marker = ";"}`` (a completion cut off before ``;`` scores 0). Train and eval
instances never overlap: the split is a hash of the digits (``tasks.split_of``), as for SumChain.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Sequence

from .tasks import running_sums, split_of

__all__ = ["WORD_LABELS", "instance", "write_sumchain_text"]

WORD_LABELS: tuple[str, ...] = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
                                "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa")
"""Sixteen step labels (as many as SumChain's a..p)."""


def instance(digits: Sequence[int], labels: Sequence[str] = WORD_LABELS) -> dict:
    """The row of one digit sequence: ``prompt``, ``solution``, ``answer`` and ``length``."""
    if not 1 <= len(digits) <= len(labels) or any(not 0 <= d <= 9 for d in digits):
        raise ValueError(f"sumchain text needs 1..{len(labels)} digits in 0..9, got {list(digits)}")
    sums = running_sums(list(digits))
    prompt = " ".join(f"{label} {d}" for label, d in zip(labels, digits))
    steps = " ".join(f"{label} {d} {s}" for label, d, s in zip(labels, digits, sums))
    return {"prompt": prompt, "solution": f"{steps} ; {sums[-1]}", "answer": str(sums[-1]), "length": len(digits)}


def _draw(n: int, split: str, rng: random.Random, min_len: int, max_len: int, labels: Sequence[str]) -> list[dict]:
    out, tries = [], 0
    while len(out) < n:
        digits = [rng.randrange(10) for _ in range(rng.randint(min_len, max_len))]
        tries += 1
        if split_of(digits) == split:
            out.append(instance(digits, labels))
        elif tries > 1000 * (n + 10):
            raise ValueError(f"no {split} instances of lengths {min_len}..{max_len}")
    return out


def write_sumchain_text(path: str | os.PathLike, n_train: int, n_eval: int, seed: int = 0, min_len: int = 2,
                        max_len: int = 8, labels: Sequence[str] = WORD_LABELS) -> dict[str, Path]:
    """Write ``train.jsonl`` (``n_train`` rows) and ``eval.jsonl`` (``n_eval``) into directory
    ``path``, lengths uniform in ``[min_len, max_len]``; returns ``{"train": path, "eval": path}``."""
    if not 1 <= min_len <= max_len <= len(labels):
        raise ValueError(f"sumchain text needs 1 <= min_len <= max_len <= {len(labels)}, got {min_len}, {max_len}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows = _draw(n, split, random.Random(f"sumchain-text:{seed}:{split}"), min_len, max_len, labels)
        files[split] = out / f"{split}.jsonl"
        tmp = files[split].with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, files[split])
    return files
