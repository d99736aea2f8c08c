"""Servers for the SGLang plugin's tests: the in-process stand-in, or real SGLang (sglang lane)."""
import pytest


def serve(kind: str, model_dir):
    if kind == "reference":
        from opdplug_sglang.testing.reference_server import ReferenceServer

        return ReferenceServer(str(model_dir)).start()
    from opdplug_sglang.server import launch

    # No radix cache: a repeated prompt must be scored whole, not from cached rows.
    return launch(str(model_dir), extra_args=["--disable-radix-cache"], timeout_s=600)


SERVER_KINDS = ["reference", pytest.param("sglang", marks=pytest.mark.sglang)]
