"""Shared fixtures: tiny models on the built-in task, and a config builder for short runs."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)
from opdplug.cli import quiet_transformers  # noqa: E402

quiet_transformers()


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, tiny_models):
    """A tiny teacher trained briefly (supervised, reference traces) so it is confident."""
    from opdplug.config import parse_config
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager

    out = tmp_path_factory.mktemp("teacher_run")
    manager = make_plugin_manager()
    config = parse_config({
        "run": {"output_dir": str(out), "steps": 120, "batch_size": 32, "lr": 3e-3, "progress": False, "resume": False},
        "student": {"path": str(tiny_models.teacher_dir)},
        "teacher": {"scorer": "none"},
        "task": {"options": {"max_len": 4}},
        "rollout": {"sampler": "reference"},
        "loss": {"support": "sampled", "estimator": "nll"},
    }, manager.plugin_tables())
    return train(config, manager).final_model_dir


@pytest.fixture
def run_config(tmp_path, tiny_models, trained_teacher):
    """``run_config(**sections)``: a validated short OPD config on tiny models, as (config, manager)."""
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager

    def make(manager=None, **sections):
        manager = manager or make_plugin_manager()
        data = {
            "run": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "progress": False, "resume": True},
            "student": {"path": str(tiny_models.student_dir)},
            "teacher": {"path": str(trained_teacher)},
            "task": {"options": {"max_len": 4}},
        }
        for name, table in sections.items():
            data.setdefault(name, {}).update(table)
        return parse_config(data, manager.plugin_tables()), manager

    return make
