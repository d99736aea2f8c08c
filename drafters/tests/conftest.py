"""Fixtures of the drafter plugin's tests."""
import os

import pytest
import torch

from opdplug.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one torch thread (two threads spin-wait on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "sglang: needs SGLang's own code (the sglang lane: make test-sglang)")


@pytest.fixture(scope="session")
def quick_target(tmp_path_factory):
    """The built-in target's QUICK recipe (seconds; it learns nothing), built by
    ``opdplug drafter target --quick`` into a private cache and copied to ``ROOT/target``."""
    root = tmp_path_factory.mktemp("drafter_target")
    old = os.environ.get("OPDPLUG_CACHE_DIR")
    os.environ["OPDPLUG_CACHE_DIR"] = str(root / "cache")
    try:
        assert main(["drafter", "target", "--quick", "--output-dir", str(root), "--json"]) == 0
    finally:
        if old is None:
            os.environ.pop("OPDPLUG_CACHE_DIR")
        else:
            os.environ["OPDPLUG_CACHE_DIR"] = old
    assert (root / "target" / "config.json").is_file() and (root / "target" / "target_eval.json").is_file()
    return root
