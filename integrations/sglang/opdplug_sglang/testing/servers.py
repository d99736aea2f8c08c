"""Servers for tests: the in-process stand-in, or a real SGLang server (the sglang lane).

``SERVER_KINDS`` parametrizes a fixture over both; the real one carries the ``sglang`` marker, so
the default suite runs the stand-in only and ``make test-sglang`` the real one.
"""
from __future__ import annotations

import os

import pytest


def serve(kind: str, model_dir: str | os.PathLike, *, aux_layer_ids=None):
    """Start a server of ``kind`` ("reference" or "sglang") for ``model_dir``; ``.stop()`` it.
    With ``aux_layer_ids`` (SGLang ids), it also captures EAGLE-3 auxiliary hidden states
    (``features.server_flags``)."""
    if kind == "reference":
        from .reference_server import ReferenceServer

        return ReferenceServer(str(model_dir), aux_layer_ids=aux_layer_ids).start()
    from ..server import launch

    if aux_layer_ids is not None:
        from ..features import server_flags

        return launch(str(model_dir), extra_args=server_flags(aux_layer_ids), timeout_s=600)
    # No radix cache: a repeated prompt must be scored whole, not from cached rows.
    return launch(str(model_dir), extra_args=["--disable-radix-cache"], timeout_s=600)


SERVER_KINDS = ["reference", pytest.param("sglang", marks=pytest.mark.sglang)]
