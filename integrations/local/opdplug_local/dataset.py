"""Prompt rows from a user's files, read through Hugging Face ``datasets``, offline.

JSONL / JSON, Parquet, CSV, or a directory written by ``Dataset.save_to_disk``. ``datasets``
converts a file once into Arrow files in its cache and memory-maps them: rows stay on disk,
never a Python list, so a million-prompt file trains with bounded memory. Row order for
training is a permutation per epoch (an int64 array: 8 bytes a row), seeded by the run seed
and the epoch, so the stream of rows is a function of (seed, position).

Every problem with the data is a one-line ``ConfigError`` before anything is written: a missing
file, an empty one, a malformed JSONL line (by line number), a missing column.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from opdplug.context import derive_seed
from opdplug.errors import ConfigError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _quiet_datasets() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        raise ConfigError("the dataset task needs the datasets package: pip install datasets") from None


def load_rows(path: str, *, key: str, split: str = ""):
    """The ``datasets.Dataset`` at ``path`` (a file or a ``save_to_disk`` directory)."""
    _quiet_datasets()
    import datasets

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{key} = {path!r} does not exist; point it at a JSONL, JSON, Parquet or CSV file or a save_to_disk directory")
    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as exc:
            raise ConfigError(f"{key} = {path!r} is a directory but not one written by save_to_disk ({_first_line(exc)})") from None
        if isinstance(ds, datasets.DatasetDict):
            names = sorted(ds)
            if not split:
                if len(names) != 1:
                    raise ConfigError(f"{key} = {path!r} holds splits {', '.join(names)}; choose one with task.options.split")
                split = names[0]
            if split not in ds:
                raise ConfigError(f"task.options.split = {split!r} is not in {path!r}; it holds {', '.join(names)}")
            ds = ds[split]
    else:
        builder = FORMATS.get(p.suffix.lower())
        if builder is None:
            raise ConfigError(f"{key} = {path!r}: unknown file type {p.suffix!r}; use .jsonl, .json, .parquet or .csv")
        if p.stat().st_size == 0:
            raise ConfigError(f"{key} = {path!r} is empty")
        if p.suffix.lower() == ".jsonl":
            _check_jsonl(p, key)
        # JSON is parsed 1 MiB at a time (datasets' default is 10 MiB): the one-time conversion
        # to Arrow then peaks at about 40 MiB for a million prompts instead of about 140.
        options = {"chunksize": 1 << 20} if builder == "json" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=str(p), split="train", **options)
        except Exception as exc:
            raise ConfigError(f"{key} = {path!r} could not be read as {builder}: {_first_line(exc)}") from None
        _release_arrow_memory()
    if len(ds) == 0:
        raise ConfigError(f"{key} = {path!r} has no rows")
    return ds


def _release_arrow_memory() -> None:
    """Hand the conversion's freed Arrow buffers back to the system (the pool keeps them)."""
    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_jsonl(path: Path, key: str) -> None:
    """Every non-blank line is a JSON object; the first that is not is named by its number.

    Streams the file line by line (a million lines in a couple of seconds, constant memory):
    the Arrow reader's own error names no line.
    """
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{key} = {str(path)!r}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                                  f"a .jsonl file holds one complete JSON object per line") from None
            if not isinstance(value, dict):
                raise ConfigError(f"{key} = {str(path)!r}: line {number} is a JSON {type(value).__name__}, not an object; "
                                  f"a .jsonl file holds one JSON object per line (one JSON array belongs in a .json file)")


def require_columns(ds, columns: dict[str, str], path: str) -> None:
    """Each ``option -> column`` names a column of ``ds`` (one-line error listing the columns)."""
    have = list(ds.column_names)
    for option, column in columns.items():
        if column and column not in have:
            raise ConfigError(f"task.options.{option} = {column!r} is not a column of {path!r}; its columns: {', '.join(have)}")


def message_roles(ds, column: str) -> set:
    """Every role (or ShareGPT ``from``) used in a messages column, read column-wise from Arrow."""
    import pyarrow.compute as pc

    flat = pc.list_flatten(ds.data.column(column))
    names = {f.name for f in flat.type} if hasattr(flat.type, "__iter__") else set()
    roles: set = set()
    for field in ("role", "from"):
        if field in names:
            roles |= {r for r in pc.unique(pc.struct_field(flat, field)).to_pylist() if r is not None}
    return roles


class Split:
    """Row indices of one split of a dataset, and the training stream over them.

    ``indices`` is an int64 array of row numbers; the stream at position ``i`` (0, 1, 2, ...
    forever) is row ``indices[perm_e[i % n]]`` with ``e = i // n`` and ``perm_e`` a permutation
    seeded by (seed, e): each epoch visits every row once, in its own order.
    """

    def __init__(self, indices: np.ndarray, shuffle: bool = True):
        self.indices = indices
        self.shuffle = shuffle
        self._perm: tuple[Optional[tuple], Optional[np.ndarray]] = (None, None)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """Row numbers of ``epoch`` in visiting order (cached: one epoch at a time)."""
        key = (seed, epoch)
        if self._perm[0] != key:
            if self.shuffle:
                rng = np.random.default_rng(derive_seed(seed, "dataset-epoch", epoch))
                self._perm = (key, self.indices[rng.permutation(len(self))])
            else:
                self._perm = (key, self.indices)
        return self._perm[1]

    def at(self, position: int, seed: int) -> int:
        """The row number at stream ``position``."""
        n = len(self)
        return int(self.order(seed, position // n)[position % n])


def split_indices(n_rows: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) row numbers: a fixed ``eval_fraction`` of the rows, chosen by ``seed``."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"task.options.eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = int(round(n_rows * eval_fraction))
    if eval_fraction > 0 and (n_eval == 0 or n_eval == n_rows):
        raise ConfigError(f"task.options.eval_fraction = {eval_fraction} leaves an empty split of {n_rows} rows")
    perm = np.random.default_rng(derive_seed(seed, "dataset-split")).permutation(n_rows)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def row(ds, index: int) -> dict[str, Any]:
    return ds[int(index)]
