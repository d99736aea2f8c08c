"""Fixtures of the SGLang plugin's tests: a stand-in server on a tiny teacher, and run configs."""
import os

import pytest

from opdplug_sglang.testing.servers import SERVER_KINDS, serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "sglang: needs a real SGLang server (the sglang lane: make test-sglang)")


@pytest.fixture(scope="session", params=SERVER_KINDS)
def teacher_server(request, tiny_models):
    """The tiny teacher served by the in-process stand-in, and (sglang lane) by real SGLang."""
    server = serve(request.param, tiny_models.teacher_dir)
    server.kind = request.param
    yield server
    server.stop()


@pytest.fixture
def opd_run(tmp_path, tiny_models):
    """``opd_run(**sections)`` -> (config, manager): a short OPD run on the tiny models."""
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager

    def make(**sections):
        manager = make_plugin_manager()
        data = {
            "run": {"output_dir": str(tmp_path / "run"), "steps": 3, "batch_size": 4, "progress": False,
                    "resume": True, "lr": 3e-3},
            "student": {"path": str(tiny_models.student_dir)},
            "teacher": {"path": str(tiny_models.teacher_dir)},
            "task": {"options": {"max_len": 4}},
            "loss": {"support": "teacher_topk", "divergence": "reverse_kl", "top_k": 4},
        }
        for name, table in sections.items():
            data.setdefault(name, {}).update(table)
        return parse_config(data, manager.plugin_tables()), manager

    return make
