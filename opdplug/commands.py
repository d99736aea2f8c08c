"""The kernel's commands: ``train``, ``check`` and ``plugins``. Each gets the manager the command
line was parsed with (``args.opd_manager``): one plugin manager per invocation."""
from __future__ import annotations

import argparse
import json
from typing import Any


def load_config(path: str, manager) -> Any:
    from .config import load_toml, parse_config

    return parse_config(load_toml(path), manager.plugin_tables(), source=str(path))


def with_run_overrides(config, args) -> Any:
    """``config`` with the ``--output-dir``, ``--steps`` and ``--json`` (no progress bars) flags
    of a training command applied to its ``[run]`` table (flags a command lacks are skipped)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "output_dir", None):
        overrides["output_dir"] = args.output_dir
    if getattr(args, "steps", None) is not None:  # --steps 0 too: validation names it
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
        manager = args.opd_manager
        config = with_run_overrides(load_config(args.config, manager), args)
        result = train(config, manager)
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process:  # under accelerate launch: one summary line, from the process that exported
            last = result.history[-1] if result.history else {}
            print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps_done, "processes": state.num_processes,
                              "final_model": str(result.final_model_dir) if result.final_model_dir else None,
                              "last_loss": last.get("loss")}), flush=True)
        end_process_group()
        return 0


def end_process_group() -> None:
    """Leave the process group together and tear it down before the interpreter exits. Left to
    interpreter shutdown, gloo's worker threads can be destroyed while still joinable, and the
    process aborts ("terminate called without an active exception") after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class CheckCommand:
    help = "validate CONFIG.toml, check tokenizers and run the self-test (student vs itself ~ 0)"

    def add_arguments(self, parser):
        parser.add_argument("config", help="a TOML config file")

    def run(self, args) -> int:
        from .loop import setup, teardown
        manager = args.opd_manager
        config = load_config(args.config, manager)
        ctx = setup(config, manager)
        try:
            report = {"config": "ok"}
            for findings in reversed(manager.hook.opd_preflight(ctx=ctx)):  # in registration order
                report.update(findings or {})
            print(json.dumps(report))
        finally:
            teardown(ctx)
        return 0


class PluginsCommand:
    help = "list every plugin: version, hooks and the component names it provides"

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args) -> int:
        manager = args.opd_manager
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


KERNEL_COMMANDS = {
    "train": TrainCommand(),
    "check": CheckCommand(),
    "plugins": PluginsCommand(),
}
