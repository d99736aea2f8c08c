"""A teacher-score cache on disk: sparse scores keyed by the exact token ids they score.

A repeated prompt + completion (an off-policy phase over a fixed data set, a resumed run, a
benchmark rerun) is scored once. Entries are small safetensors files (token log-probs, top-k ids
and log-probs, chosen-id log-probs), written to a temporary name and renamed into place, so a
killed run never leaves half an entry and concurrent processes may share the directory.

The key covers everything the scores depend on: a namespace (the teacher's identity and the
temperature, set by the caller), the token ids, the first scored position, k and the chosen ids.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from safetensors.torch import load_file, save_file

from .protocol import SparseScores

_FIELDS = ("token_logprobs_T", "topk_ids_T_K", "topk_logprobs_T_K", "chosen_logprobs_T_C")


class ScoreCache:
    """Sparse teacher scores under ``directory``, two-level fan-out by key hash."""

    def __init__(self, directory: str | os.PathLike, namespace: str):
        self.directory = Path(directory)
        self.namespace = namespace
        self.hits = 0
        self.misses = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._bytes = sum(p.stat().st_size for p in self.directory.glob("*/*.safetensors"))

    def key(self, ids: Sequence[int], score_from: int, top_k: int, chosen_ids: Sequence[int] = ()) -> str:
        blob = json.dumps([self.namespace, [int(i) for i in ids], int(score_from), int(top_k), [int(i) for i in chosen_ids]])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> Optional[SparseScores]:
        path = self._path(key)
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # a corrupt entry (disk trouble) is a miss, and is replaced
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return SparseScores(**{f: tensors.get(f) for f in _FIELDS})

    def put(self, key: str, scores: SparseScores) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f: getattr(scores, f).contiguous() for f in _FIELDS if getattr(scores, f) is not None}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            size = os.path.getsize(tmp)
            os.replace(tmp, path)
            self._bytes += size
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def size_bytes(self) -> int:
        """Bytes the cache holds on disk (counted at start-up, then kept up to date by ``put``)."""
        return self._bytes

    def num_entries(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.safetensors"))
