"""Every config shipped under configs/ parses and names only registered components."""
from pathlib import Path

import pytest

from opdplug.cli import load_config
from opdplug.context import RunContext
from opdplug.loop import build_task, validate_components
from opdplug.manager import make_plugin_manager

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path, tiny_models):
    manager = make_plugin_manager()
    config = load_config(str(path), manager)
    validate_components(RunContext(config=config, manager=manager))
    tokenizer = tiny_models.tokenizer
    if config.task.name != "sumchain":  # e.g. the agent task: its own vocabulary (tiny students get it too)
        from opdplug import tiny

        tokenizer = tiny.build_tokenizer(manager.registry.get("tasks", config.task.name, "task.name").words())
    build_task(manager.registry, config.task.name, config.task.options, tokenizer)
