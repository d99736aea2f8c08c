"""The local backend's commands: ``opdplug eval`` (task accuracy of a model, run or checkpoint),
``opdplug generate`` (completions as JSONL) and ``opdplug demo`` (the main job).

Which task a model is measured on: ``--config`` (a run config: its ``[task]`` table), else the
run's own ``config.toml`` when PATH is a run or checkpoint directory, else ``--task``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from opdplug.errors import ConfigError


def _task_arguments(parser) -> None:
    parser.add_argument("path", help="a model directory, a run directory, or a checkpoint directory")
    parser.add_argument("--config", help="a run config whose [task] table names the prompts (default: the run's own)")
    parser.add_argument("--task", default="", help="registered task name when neither gives one (default: the default task)")
    parser.add_argument("-n", type=int, default=200, help="held-out prompts (per length for tasks with lengths); 0: all")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts generated together")


class EvalCommand:
    help = "accuracy of a model directory, finished run or checkpoint on its task's held-out prompts"

    def add_arguments(self, parser):
        _task_arguments(parser)
        parser.add_argument("--lengths", default="2,4,6,8", help="tasks with lengths (SumChain): comma-separated T")
        parser.add_argument("--json", action="store_true", help="print JSON only")

    def run(self, args) -> int:
        from opdplug.manager import make_plugin_manager

        from .evaluate import accuracy_by_length, accuracy_on_eval_split

        _check_common(args)
        manager = make_plugin_manager()
        model, tokenizer, task = load_for_eval(Path(args.path), args.task, manager, config_path=args.config)
        if hasattr(task, "eval_size"):  # a dataset: accuracy over its held-out rows
            if getattr(task, "verifier", None) is None:
                raise ConfigError("accuracy needs a verifier: set task.options.verifier (e.g. \"final_number\", \"exact_match\")")
            acc, n = accuracy_on_eval_split(model, tokenizer, task, n=args.n, temperature=args.temperature,
                                            batch_size=args.batch_size, progress=not args.json)
            print(json.dumps({"accuracy": acc, "prompts": n}) if args.json else f"accuracy {acc:.3f} on {n} held-out prompts")
            return 0
        try:
            lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
        if not lengths:
            raise ConfigError("--lengths names no length")
        try:
            acc = accuracy_by_length(model, tokenizer, task, lengths, n=args.n or 200, temperature=args.temperature,
                                     batch_size=args.batch_size, progress=not args.json)
        except ValueError as exc:  # e.g. a length the task does not have
            raise ConfigError(f"--lengths {args.lengths}: {exc}") from None
        if args.json:
            print(json.dumps({"accuracy": {str(k): v for k, v in acc.items()}}))
        else:
            print("T      accuracy")
            for T, a in acc.items():
                print(f"{T:<6d} {a:.3f}")
        return 0


class GenerateCommand:
    help = "write a model's completions of its task's prompts as JSONL (batched)"

    def add_arguments(self, parser):
        _task_arguments(parser)
        parser.add_argument("--out", required=True, help="the JSONL file to write (replaced whole when done)")
        parser.add_argument("--split", choices=("eval", "train"), default="eval", help="which prompts (default: held-out)")
        parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0) and train-split draw")

    def run(self, args) -> int:
        from opdplug.manager import make_plugin_manager

        from .evaluate import generate_rows

        _check_common(args)
        out = Path(args.out)
        if out.is_dir():
            raise ConfigError(f"--out {args.out!r} is a directory; give a file name such as completions.jsonl")
        manager = make_plugin_manager()
        model, tokenizer, task = load_for_eval(Path(args.path), args.task, manager, config_path=args.config)
        n = args.n or (task.eval_size() if hasattr(task, "eval_size") and args.split == "eval" else 200)
        prompts = task.prompts(n, seed=args.seed, split=args.split)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
        written = 0
        try:
            with os.fdopen(fd, "w") as f:
                for row in generate_rows(model, tokenizer, task, prompts, temperature=args.temperature,
                                         batch_size=args.batch_size, seed=args.seed, progress=True):
                    f.write(json.dumps(row) + "\n")
                    written += 1
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        print(json.dumps({"out": str(out), "rows": written}))
        return 0


def _check_common(args) -> None:
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.n < 0 or args.batch_size < 1:
        raise ConfigError("-n must be >= 0 and --batch-size >= 1")


def load_for_eval(path: Path, task_name: str, manager, options: dict | None = None, config_path: str | None = None):
    """(model, tokenizer, task) from a model dir, a run dir, or a checkpoint dir."""
    import tomllib

    import torch

    from opdplug.checkpoint import load_checkpoint, latest_checkpoint
    from opdplug.cli import load_config
    from opdplug.config import parse_config
    from opdplug.loop import build_task

    from . import models as local
    from .evaluate import resolve_model_dir

    if not path.exists():
        raise ConfigError(f"{str(path)!r} does not exist; give a model directory, a run directory or a checkpoint directory")
    config = load_config(config_path, manager) if config_path else None
    if (path / "state.json").is_file():  # a training checkpoint: rebuild the student, load its tensors
        run_config = parse_config(tomllib.loads((path / "config.toml").read_text()), manager.plugin_tables())
        run_config = run_config.replace(student={"adapter": ""})  # the checkpoint holds the whole adapter
        config = config or run_config
        model, tokenizer = local.load_student(run_config, manager.registry.get("tasks", run_config.task.name, "task.name"))
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
    if config is None and (path / "config.toml").is_file() and latest_checkpoint(path) is not None:  # a run directory
        config = parse_config(tomllib.loads((path / "config.toml").read_text()), manager.plugin_tables())
    tokenizer = local.load_tokenizer(str(model_dir))
    if config is not None:
        task = build_task(manager.registry, config.task.name, config.task.options, tokenizer)
    else:
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
