"""The local backend's commands: ``opdplug eval`` (task accuracy of a model, run or checkpoint)
and ``opdplug demo`` (the main job)."""
from __future__ import annotations

import json
from pathlib import Path

from opdplug.errors import ConfigError


class EvalCommand:
    help = "accuracy by sequence length of a model directory, finished run or checkpoint"

    def add_arguments(self, parser):
        parser.add_argument("path", help="a model directory, a run directory, or a checkpoint directory")
        parser.add_argument("--task", default="", help="registered task name (default: the default task)")
        parser.add_argument("--lengths", default="2,4,6,8", help="comma-separated sequence lengths T")
        parser.add_argument("-n", type=int, default=200, help="held-out prompts per length")
        parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        parser.add_argument("--json", action="store_true", help="print JSON only")

    def run(self, args) -> int:

        from .evaluate import accuracy_by_length
        from opdplug.manager import make_plugin_manager

        manager = make_plugin_manager()
        try:
            lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
        model, tokenizer, task = load_for_eval(Path(args.path), args.task, manager)
        acc = accuracy_by_length(model, tokenizer, task, lengths, n=args.n, temperature=args.temperature, progress=not args.json)
        if args.json:
            print(json.dumps({"accuracy": {str(k): v for k, v in acc.items()}}))
        else:
            print("T      accuracy")
            for T, a in acc.items():
                print(f"{T:<6d} {a:.3f}")
        return 0


def load_for_eval(path: Path, task_name: str, manager, options: dict | None = None):
    """(model, tokenizer, task) from a model dir, a run dir, or a checkpoint dir."""
    import torch

    from opdplug.checkpoint import load_checkpoint
    from opdplug.config import parse_config
    from opdplug.loop import build_task

    from . import models as local
    from .evaluate import resolve_model_dir

    if (path / "state.json").is_file():  # a training checkpoint: rebuild the student, load its tensors
        import tomllib

        config = parse_config(tomllib.loads((path / "config.toml").read_text()), manager.plugin_tables())
        config = config.replace(student={"adapter": ""})  # the checkpoint holds the whole adapter
        model, tokenizer = local.load_student(config, manager.registry.get("tasks", config.task.name, "task.name"))
        task = build_task(manager.registry, config.task.name, config.task.options, tokenizer)
        state = load_checkpoint(path)["model"]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in state:
                    p.copy_(state[name])
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model, tokenizer, task
    model_dir = resolve_model_dir(path)
    tokenizer = local.load_tokenizer(str(model_dir))
    task = build_task(manager.registry, task_name, options, tokenizer)
    return local.load_model(str(model_dir), "path"), tokenizer, task


class DemoCommand:
    help = "the main job: train a tiny teacher, distill a student off- and on-policy, compare by T"

    def add_arguments(self, parser):
        parser.add_argument("--output-dir", default="runs/demo", help="where everything goes")
        parser.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")

    def run(self, args) -> int:
        from .demo import run_demo

        run_demo(Path(args.output_dir), quick=args.quick)
        return 0
