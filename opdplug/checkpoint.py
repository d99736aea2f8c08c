"""Checkpoints: safetensors only, written atomically, enough state to resume exactly.

Layout of ``<output_dir>/checkpoints/step-000042/``::

    model.safetensors       trainable weights (all weights, or only the LoRA adapter's)
    optimizer.safetensors   every tensor of the optimizer state, keyed ``state.<param>.<name>``
    state.json              step, optimizer param groups and scalars, scheduler, RNG, versions
    config.toml             the resolved config of the run

A checkpoint directory is first written under a temporary name, every file fsynced, then
renamed into place; ``latest`` (a one-line file with the directory name) is replaced the same
way. A run killed at any moment leaves either the previous checkpoint or the new one, never
half of one. Nothing here uses pickle.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Inverse of ``optimizer_to_flat``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in rest["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states: torch (as tensors) and Python's ``random`` (as JSON)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    scheduler_state: dict,
    config_toml: str,
    versions: dict[str, str],
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and return its directory.

    :param step: number of optimizer steps completed (resume starts at this step).
    :param keep: step checkpoints to keep; older ones are removed after the new one is in place.
    """
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=root))
    try:
        _save_tensors(model_state, tmp / "model.safetensors")
        opt_tensors, opt_rest = optimizer_to_flat(optimizer_state)
        rng_tensors, rng_rest = rng_state()
        _save_tensors({**opt_tensors, **rng_tensors}, tmp / "optimizer.safetensors")
        state = {
            "step": step,
            "optimizer": opt_rest,
            "scheduler": scheduler_state,
            "rng": rng_rest,
            "versions": versions,
            "extra": extra or {},
        }
        _write_text(tmp / "state.json", json.dumps(state, indent=1))
        _write_text(tmp / "config.toml", config_toml)
        _fsync_dir(tmp)
        if final.exists():  # re-running the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = root / f".{LATEST}.tmp"
    _write_text(latest_tmp, final.name + "\n")
    os.replace(latest_tmp, root / LATEST)
    _fsync_dir(root)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep or None]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The directory ``latest`` points to, or None."""
    root = Path(output_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: str | Path) -> dict:
    """Everything ``save_checkpoint`` wrote: model tensors, optimizer state dict, the rest."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    other = load_file(str(path / "optimizer.safetensors"))
    opt_tensors = {k: v for k, v in other.items() if k.startswith("state.")}
    rng_tensors = {k: v for k, v in other.items() if k.startswith("rng.")}
    return {
        "step": state["step"],
        "model": load_file(str(path / "model.safetensors")),
        "optimizer": optimizer_from_flat(opt_tensors, state["optimizer"]),
        "scheduler": state["scheduler"],
        "rng_tensors": rng_tensors,
        "rng": state["rng"],
        "versions": state["versions"],
        "extra": state["extra"],
        "config_toml": (path / "config.toml").read_text(),
    }
