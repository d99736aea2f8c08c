"""Models opdplug trains for itself, built once per recipe and cached.

The demo's teacher, the drafter plugin's target and the agent plugin's teachers are all trained
by opdplug on its own synthetic tasks (nothing is downloaded). Each is keyed by a hash of the
recipe fields that change its weights and lives in ``cache_dir()`` under a name like
``drafter-target-KEY``. ``cached_model`` builds one in a private directory beside the cache and
moves it into place with one rename, so a killed build leaves nothing half-written that a later
run could mistake for a model, and two processes building the same recipe keep the first.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable


def cache_dir() -> Path:
    """``$OPDPLUG_CACHE_DIR``, else ``~/.cache/opdplug``."""
    return Path(os.environ.get("OPDPLUG_CACHE_DIR", Path.home() / ".cache" / "opdplug"))


def recipe_key(recipe: Any, version: int, exclude: Iterable[str] = ()) -> str:
    """12 hex digits of SHA-256 over a dataclass recipe's fields (minus ``exclude``) and ``version``."""
    skip = set(exclude)
    fields = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in skip}
    blob = json.dumps({"version": version, **fields}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_cached(path: Path) -> bool:
    """Whether a finished model sits at ``path`` (only complete builds are ever moved there)."""
    return (Path(path) / "config.json").is_file()


def cached_model(name: str, build: Callable[[Path], Path]) -> tuple[Path, bool]:
    """``cache_dir() / name``, built first when absent.

    :param build: called with an empty private work directory; trains and returns the finished
        model directory (inside the work directory), which is then renamed into place.
    :return: ``(path, built)``: ``built`` is False when the model was already there (or another
        process finished the same build first).
    """
    import torch

    target = cache_dir() / name
    if is_cached(target):
        return target, False
    work = cache_dir() / f".build-{name}-{os.getpid()}"
    threads = torch.get_num_threads()
    try:
        final = build(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        if is_cached(target):  # another process finished first: keep theirs
            return target, False
        if target.exists():
            shutil.rmtree(target)
        os.replace(final, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        torch.set_num_threads(threads)
    return target, True
