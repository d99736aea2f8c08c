"""Plugin tests use the fixtures opdplug ships to plugin authors (``opdplug.testing``)."""
import pytest


@pytest.fixture
def short_run(tmp_path, tiny_models, opd_config):
    """``short_run(**sections) -> TrainResult``: a 2-step run on the tiny models."""
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager

    def run(manager=None, **sections):
        manager = manager or make_plugin_manager()
        data = {
            "run": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "progress": False, "resume": False},
            "student": {"path": str(tiny_models.student_dir)},
            "teacher": {"path": str(tiny_models.teacher_dir)},
            "task": {"options": {"max_len": 3}},
        }
        for name, table in sections.items():
            data.setdefault(name, {}).update(table)
        return train(opd_config(data, manager), manager)

    return run


@pytest.fixture
def run_config(tmp_path, tiny_models):
    """``run_config(manager=None, **sections) -> (config, manager)``: a validated short OPD config
    on the tiny models (every installed plugin), resuming from its run directory."""
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager

    def make(manager=None, **sections):
        manager = manager or make_plugin_manager()
        data = {
            "run": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "progress": False, "resume": True},
            "student": {"path": str(tiny_models.student_dir)},
            "teacher": {"path": str(tiny_models.teacher_dir)},
            "task": {"options": {"max_len": 4}},
        }
        for name, table in sections.items():
            data.setdefault(name, {}).update(table)
        return parse_config(data, manager.plugin_tables()), manager

    return make
