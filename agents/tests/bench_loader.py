"""Import a script under bench/ as a module, for the benchmarks' smoke tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench(monkeypatch, script: str):
    """``bench/<script>`` as a fresh module named ``bench_<stem>``; ``sys.path`` and
    ``sys.modules`` are restored by ``monkeypatch`` after the test."""
    path = ROOT / "bench" / script
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts bench/ on it
    spec.loader.exec_module(module)
    return module
