"""``opdplug`` command line: train, check, eval, plugins, demo, and plugin-provided commands."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, OpdError


def load_config(path: str, manager) -> Any:
    from .config import load_toml, parse_config

    return parse_config(load_toml(path), manager.plugin_tables(), source=str(path))


def with_run_overrides(config, args) -> Any:
    """``config`` with the ``--output-dir``, ``--steps`` and ``--json`` (no progress bars) flags
    of a training command applied to its ``[run]`` table (flags a command lacks are skipped)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "output_dir", None):
        overrides["output_dir"] = args.output_dir
    if getattr(args, "steps", None):
        overrides["steps"] = args.steps
    if getattr(args, "json", False):
        overrides["progress"] = False
    return config.replace(run=overrides) if overrides else config


class TrainCommand:
    help = "train a student as CONFIG.toml describes (resumes from the run's latest checkpoint)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="a TOML config file")
        parser.add_argument("--output-dir", help="override run.output_dir")
        parser.add_argument("--steps", type=int, help="override run.steps")

    def run(self, args) -> int:
        from .loop import train
        from .manager import make_plugin_manager

        manager = make_plugin_manager()
        config = with_run_overrides(load_config(args.config, manager), args)
        result = train(config, manager)
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return 0  # under accelerate launch: one summary line, from the process that exported
        last = result.history[-1] if result.history else {}
        print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps_done, "processes": PartialState().num_processes,
                          "final_model": str(result.final_model_dir) if result.final_model_dir else None,
                          "last_loss": last.get("loss")}))
        return 0


class CheckCommand:
    help = "validate CONFIG.toml, check tokenizers and run the self-test (student vs itself ~ 0)"

    def add_arguments(self, parser):
        parser.add_argument("config", help="a TOML config file")

    def run(self, args) -> int:
        from .loop import needs_preflight, preflight, setup
        from .manager import make_plugin_manager

        manager = make_plugin_manager()
        config = load_config(args.config, manager)
        ctx = setup(config, manager)
        try:
            report = {"config": "ok", "tokenizers": "identical" if config.teacher.path else "no local teacher"}
            if needs_preflight(ctx):
                report["self_loss_per_token"] = preflight(ctx)
            print(json.dumps(report))
        finally:
            manager.hook.opd_unconfigure(ctx=ctx)
        return 0


class EvalCommand:
    help = "accuracy by sequence length of a model directory, finished run or checkpoint"

    def add_arguments(self, parser):
        parser.add_argument("path", help="a model directory, a run directory, or a checkpoint directory")
        parser.add_argument("--task", default="sumchain", help="registered task name (default: sumchain)")
        parser.add_argument("--lengths", default="2,4,6,8", help="comma-separated sequence lengths T")
        parser.add_argument("-n", type=int, default=200, help="held-out prompts per length")
        parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        parser.add_argument("--json", action="store_true", help="print JSON only")

    def run(self, args) -> int:

        from .evaluate import accuracy_by_length
        from .manager import make_plugin_manager

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

    from . import local
    from .checkpoint import load_checkpoint
    from .config import parse_config
    from .evaluate import resolve_model_dir
    from .loop import build_task

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


class PluginsCommand:
    help = "list every plugin: version, hooks and the component names it provides"

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args) -> int:
        from .manager import make_plugin_manager

        manager = make_plugin_manager()
        manager.registry  # fills each plugin's "provides"
        infos = list(manager.infos.values())
        if args.json:
            print(json.dumps([
                {"name": i.name, "distribution": i.distribution, "version": i.version,
                 "hooks": i.hooks, "provides": i.provides, **({"error": i.error} if i.error else {})}
                for i in infos
            ], indent=1))
            return 0
        for i in infos:
            head = f"{i.name}  ({i.distribution or 'in code'} {i.version})".rstrip()
            print(head)
            if i.error:
                print(f"    FAILED TO LOAD: {i.error}")
                continue
            print(f"    hooks: {', '.join(i.hooks)}")
            for kind, names in sorted(i.provides.items()):
                print(f"    {kind}: {', '.join(sorted(names))}")
        return 0


class DemoCommand:
    help = "the main job: train a tiny teacher, distill a student off- and on-policy, compare by T"

    def add_arguments(self, parser):
        parser.add_argument("--output-dir", default="runs/demo", help="where everything goes")
        parser.add_argument("--quick", action="store_true", help="a much smaller run (for tests)")

    def run(self, args) -> int:
        from .demo import run_demo

        run_demo(Path(args.output_dir), quick=args.quick)
        return 0


BUILTIN_COMMANDS = {
    "train": TrainCommand(),
    "check": CheckCommand(),
    "eval": EvalCommand(),
    "plugins": PluginsCommand(),
    "demo": DemoCommand(),
}


def build_parser(manager) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opdplug", description="On-policy distillation, built as plugins.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = manager.registry.components["commands"]
    for name in sorted(commands):
        command = commands[name]
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def quiet_transformers() -> None:
    """Our own progress bars are enough: silence per-file load/save bars and advisories."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    from .manager import make_plugin_manager

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    quiet_transformers()
    try:
        manager = make_plugin_manager()
        args = build_parser(manager).parse_args(argv)
        return args._command.run(args)
    except OpdError as exc:
        print(f"opdplug: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("opdplug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
