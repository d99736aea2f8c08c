"""Every config shipped under configs/ parses and names only registered components."""
from pathlib import Path

import pytest

from opdplug.cli import load_config
from opdplug.prepare import build_task, validate
from opdplug.manager import make_plugin_manager

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path, tiny_models, tmp_path):
    manager = make_plugin_manager()
    config = load_config(str(path), manager)
    config = validate(config, manager).config
    tokenizer = tiny_models.tokenizer
    options = config.task.options
    if config.task.name == "dataset":  # the data a build script writes: written here the same way
        from opdplug.testing.models import build_bpe_tokenizer
        from opdplug_local import chatgen
        from opdplug_local.wordproblems import write_jsonl

        conversations = "conversations" in options["path"]  # examples/conversations/build.py's data
        if conversations:
            paths = chatgen.write_splits(tmp_path, 60, 10, seed=0)
            for name in {Path(options["path"]).name, Path(options.get("eval_path", "eval.jsonl")).name} - {"train.jsonl", "eval.jsonl"}:
                (tmp_path / name).write_text(paths["train"].read_text())  # e.g. the regenerated file
        else:
            write_jsonl(tmp_path, 200, 0, eval_fraction=0.05)
        tokenizer = build_bpe_tokenizer(vocab_size=300)
        options = {**options, "path": str(tmp_path / Path(options["path"]).name),
                   **({"eval_path": str(tmp_path / Path(options["eval_path"]).name)} if options.get("eval_path") else {})}
        task = build_task(manager.registry, config.task.name, options, tokenizer)
        assert task.prompts(2, seed=0, split="eval")
        if conversations:  # every training row carries its assistant turns, masked
            assert all(p.reference_ids and 0 in p.reference_mask and 1 in p.reference_mask for p in task.take(0, 4, seed=0)[0]) \
                or options.get("loss_turns", "last") != "all"
        else:
            assert task.verifier is not None
        return
    if config.task.name == "agent" and options.get("env") == "gymnasium":  # a game: no closed vocabulary
        from opdplug.testing.models import build_bpe_tokenizer

        build_task(manager.registry, config.task.name, options, build_bpe_tokenizer(vocab_size=300))
        return
    if config.task.name != "sumchain":  # e.g. the agent task: its own vocabulary (tiny students get it too)
        from opdplug_local import tiny

        tokenizer = tiny.build_tokenizer(manager.registry.get("tasks", config.task.name, "task.name").words())
    build_task(manager.registry, config.task.name, options, tokenizer)


ACCELERATE = {"ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "fsdp": "FSDP"}


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_config_parses_with_accelerate_itself(name):
    """configs/accelerate/*.yaml load with accelerate's own loader (which rejects unknown keys),
    and every nested fsdp/deepspeed key is an option ``accelerate launch`` knows."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(Path(__file__).parent.parent / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == ACCELERATE[name]
    assert config.num_processes >= 2 and config.num_machines == 1
    options = {action.dest for action in launch_command_parser()._actions}
    for key in config.fsdp_config:  # launch maps fsdp_config.x to --fsdp_x
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in options, key
    for key in config.deepspeed_config:
        assert key in options, key
