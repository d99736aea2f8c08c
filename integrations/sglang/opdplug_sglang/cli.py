"""``opdplug sglang ...``: start a local server, check a server against a tokenizer.

::

    opdplug sglang serve MODEL_DIR [--port 30000] [--python PATH] [--device cpu] [-- EXTRA SGLANG FLAGS]
    opdplug sglang check URL [URL ...] --tokenizer MODEL_DIR [--json]

``serve`` runs ``sglang.launch_server`` from the SGLang environment (made by
``integrations/sglang/scripts/setup_sglang_env.sh``) with the flags that work on a CPU, waits
until it answers, prints its URL and keeps it in the foreground. ``check`` asks each server for
its model and compares its vocabulary with the tokenizer's, as a training run does at start-up.
"""
from __future__ import annotations

import argparse
import json
import signal


class SGLangCommand:
    help = "SGLang servers: start one locally (serve), check one against a tokenizer (check)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        serve = sub.add_parser("serve", help="start sglang.launch_server for a local model directory")
        serve.add_argument("model", help="a local Hugging Face model directory")
        serve.add_argument("--port", type=int, default=30000)
        serve.add_argument("--python", default="", help="Python of the SGLang environment (default: .venv-sglang)")
        serve.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        serve.add_argument("--threads", type=int, default=1, help="CPU threads of the server (device cpu)")
        serve.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more sglang.launch_server flags")

        check = sub.add_parser("check", help="reachability and vocabulary of servers against a tokenizer")
        check.add_argument("urls", nargs="+")
        check.add_argument("--tokenizer", required=True, help="a local model or tokenizer directory")
        check.add_argument("--json", action="store_true", help="print one JSON object only")

    def run(self, args) -> int:
        return self._serve(args) if args.action == "serve" else self._check(args)

    def _serve(self, args) -> int:
        from .server import launch

        extra = [a for a in args.extra if a != "--"]
        # The server runs in its own session (a Ctrl-C in this terminal does not reach it), so this
        # process must stop it: on Ctrl-C, and on SIGTERM from a process manager, also where the
        # shell started it with SIGINT ignored (a background job), which Python would inherit.
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server = launch(args.model, port=args.port, python=args.python, device=args.device,
                            extra_args=extra, threads=args.threads)
            print(f"SGLang serving {args.model} at {server.url} (log: {server.log_path}); Ctrl-C stops it", flush=True)
            try:
                server.process.wait()
            except KeyboardInterrupt:
                pass
            finally:
                server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _check(self, args) -> int:
        from opdplug_local.models import load_tokenizer

        from .client import SGLangClient
        from .target import SGLangTarget

        tokenizer = load_tokenizer(args.tokenizer)
        report = {}
        for url in args.urls:
            target = SGLangTarget(SGLangClient([url]))
            info = target.model_info()
            target.check_vocabulary(tokenizer)
            report[target.client.urls[0]] = {"model_path": info.get("model_path"), "vocabulary": "matches"}
        print(json.dumps(report, indent=None if args.json else 1))
        return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # unwinds into the ``finally`` that stops the server
