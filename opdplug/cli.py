"""``opdplug`` command line: the kernel's ``train``, ``check`` and ``plugins``, and every command a
plugin registers."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from .commands import load_config, with_run_overrides  # noqa: F401 (the API plugins' commands use)
from .errors import OpdError


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
        # transformers 5 renames a forward argument the sampler passes to other architectures'
        # own forward; the notice is for library authors, not for a user's run.
        warnings.filterwarnings("ignore", message=".*past_key_values.* is deprecated", category=FutureWarning)
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
        args.opd_manager = manager
        return args._command.run(args)
    except OpdError as exc:
        print(f"opdplug: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("opdplug: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `opdplug plugins | head`: the reader left; stay quiet like other Unix tools do.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
