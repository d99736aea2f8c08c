"""Fixtures of the drafter plugin's tests."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "sglang: needs SGLang's own code (the sglang lane: make test-sglang)")
