"""``opdplug drafter ...``: build the built-in target, train, evaluate and export drafters.

::

    opdplug drafter target [--output-dir runs/drafters] [--quick] [--json]
    opdplug drafter train CONFIG.toml [--output-dir DIR] [--steps N] [--json]
    opdplug drafter eval DRAFTER [--target DIR] [--kind auto] [--k 4] [--batch-sizes 1,8]
                         [--temperatures 0,1] [--prompts 32] [--reps 3] [--no-timing] [--json]
    opdplug drafter export DRAFTER OUTPUT_DIR [--target DIR] [--kind auto] [--overwrite] [--json]
    opdplug drafter sglang-accept DRAFTER --url URL [--target DIR] [--k 4] [--prompts 32]
                         [--temperature 0] [--retry-budget 30] [--json]
    opdplug drafter regenerate INPUT.jsonl OUTPUT.jsonl (--target DIR | --sglang-url URL --tokenizer DIR)
                         [--turns all|last] [--batch-size 8] [--max-new-tokens 256] [--temperature 1]
                         [--template-kwargs JSON] [--seed 0] [--limit N] [--json]

``target`` builds (or loads from the cache) the built-in SumChain target of ``target.py`` and
copies it to ``OUTPUT_DIR/target``, where ``configs/drafter_*.toml`` look for it. ``train`` runs
a ``[drafter]`` config through the registered kind it names (``kinds``): ``standalone`` is
DistillSpec through the ordinary OPD loop, ``eagle3`` calls ``eagle3.train_eagle3``, a plugin's
kind its own ``train``; each ends with the exact acceptance of the result, and the run directory
keeps the config (``eval`` and ``export`` find the target there). ``eval`` and ``export`` load
and write through the kind too (``--kind auto``: the kind that recognises the directory).
``eval`` prints the speculative-decoding report (acceptance length with the bonus token,
per-position acceptance measured and predicted by 1 - TVD, tokens/s and speed-up over
target-only decoding) at every batch size and temperature asked. ``export`` writes what SGLang
loads (``opdplug_drafters.export.export_drafter``, audited). ``sglang-accept`` puts the
``spec_accept_length`` an SGLang server serving the export reports beside opdplug's measured and
predicted acceptance on the same prompts (``sglang_accept.py``; a GPU check). ``regenerate``
has the target write the assistant turns of a conversation JSONL (ShareGPT or OpenAI) again,
batched and resumable, into JSONL of the same normalised form (``regenerate.py``).

Bad input is one line on stderr and a non-zero exit, through ``opdplug``'s error handling.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any, Optional

from opdplug.errors import ConfigError

from .evaluation import LEGEND, evaluate, format_table, report_dicts


def parse_list(text: str, kind: type, flag: str) -> list:
    """``"1,8"`` -> ``[1, 8]``; a one-line error naming the flag otherwise."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def _run_config(path: Path) -> dict:
    """The ``config.toml`` of the run a drafter directory belongs to ({} if none)."""
    for toml in (path / "config.toml", path.parent / "config.toml"):
        if toml.is_file():
            try:
                return tomllib.loads(toml.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                return {}
    return {}


def find_target(drafter: Path, given: Optional[str]) -> Path:
    """``--target``, else the target the drafter was trained against when its run records it."""
    if given:
        path = Path(given)
    else:
        path = None
        teacher = _run_config(drafter).get("teacher", {}).get("path")
        if teacher:
            path = Path(teacher)
        for summary in (drafter / "train_summary.json", drafter.parent / "train_summary.json"):
            if path is None and summary.is_file():
                target = json.loads(summary.read_text()).get("target_dir")
                path = Path(target) if target else None
        if path is None:
            raise ConfigError(f"no --target given and {str(drafter)!r} does not record its target; pass --target DIR")
    if not (path / "config.json").is_file():
        raise ConfigError(f"target {str(path)!r} is not a model directory (no config.json); pass --target DIR")
    return path


def task_for(drafter: Path, target_dir: Path, tokenizer, manager) -> Any:
    """The task a drafter is evaluated on: its run's ``[task]``, else the built-in target's
    recipe (SumChain over its lengths), else default SumChain."""
    from opdplug.prepare import build_task

    from .target import load_measured

    task = _run_config(drafter).get("task")
    if task:
        return build_task(manager.registry, task.get("name", "sumchain"), task.get("options", {}), tokenizer)
    recipe = load_measured(target_dir).get("recipe", {})
    options = {k: recipe[k] for k in ("min_len", "max_len") if k in recipe}
    return build_task(manager.registry, "sumchain", options, tokenizer)


def load_drafter(path: Path, kind: str, target, manager):
    """``(drafter, kind name)``: ``path`` loaded for ``target`` by the registered kind ``kind``
    (``auto``: the kind that recognises the directory)."""
    from .kinds import KIND, detect_kind, get_kind

    if kind == "auto":
        kind = detect_kind(path, manager.registry.components.get(KIND, {}))
    return get_kind(manager.registry, kind, "--kind").load(path, target), kind


def invocation_manager(args):
    """The plugin manager of this ``opdplug`` invocation (a fresh one when called from code)."""
    manager = getattr(args, "opd_manager", None)
    if manager is None:
        from opdplug.manager import make_plugin_manager

        manager = make_plugin_manager()
    return manager


def load_setup(args) -> tuple:
    """``(path, target_dir, target, tokenizer, drafter, kind, task)`` for ``args.path``,
    ``args.target`` and ``args.kind``; one-line errors for what is missing."""
    from opdplug_local import models as local

    path = Path(args.path)
    if not path.exists():
        raise ConfigError(f"{args.path!r} does not exist")
    manager = invocation_manager(args)
    target_dir = find_target(path, args.target)
    target = local.load_model(str(target_dir), "--target").eval()
    tokenizer = local.load_tokenizer(str(target_dir))
    drafter, kind = load_drafter(path, args.kind, target, manager)
    return path, target_dir, target, tokenizer, drafter, kind, task_for(path, target_dir, tokenizer, manager)


class DrafterCommand:
    help = "speculative-decoding drafters: build the built-in target, train (DistillSpec, EAGLE-3), evaluate, export for SGLang"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        tg = sub.add_parser("target", help="build (or load from the cache) the built-in SumChain target")
        tg.add_argument("--output-dir", default="runs/drafters", help="copy the target to OUTPUT_DIR/target (default runs/drafters)")
        tg.add_argument("--quick", action="store_true", help="a tiny recipe (for tests; not a good target)")
        tg.add_argument("--json", action="store_true", help="print one JSON object only")

        tr = sub.add_parser("train", help="train the drafter a [drafter] config describes, then measure its acceptance")
        tr.add_argument("config", help="a TOML config with a [drafter] table (configs/drafter_*.toml)")
        tr.add_argument("--output-dir", help="override run.output_dir")
        tr.add_argument("--steps", type=int, help="override the number of training steps")
        tr.add_argument("--json", action="store_true", help="print one JSON object only")

        ev = sub.add_parser("eval", help="exact speculative decoding with the target: acceptance length and speed-up")
        ev.add_argument("path", help="a drafter: model directory, DistillSpec run directory, EAGLE-3 run/head/export")
        ev.add_argument("--target", help="the target model directory (default: the one the drafter's run records)")
        ev.add_argument("--kind", default="auto", help="drafter kind (default: recognised from the directory)")
        ev.add_argument("--k", type=int, default=4, help="draft tokens per verify round (default 4)")
        ev.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
        ev.add_argument("--temperatures", default="0,1", help="comma-separated serving temperatures, 0 = greedy (default 0,1)")
        ev.add_argument("--prompts", type=int, default=32, help="held-out prompts (default 32)")
        ev.add_argument("--reps", type=int, default=3, help="timed repetitions of each method, alternated (default 3)")
        ev.add_argument("--no-timing", action="store_true", help="acceptance only, no wall-clock comparison")
        ev.add_argument("--seed", type=int, default=1234, help="picks the prompts and seeds the sampling")
        ev.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
        ev.add_argument("--json", action="store_true", help="print one JSON object only")

        ex = sub.add_parser("export", help="write a drafter as SGLang loads it (audited)")
        ex.add_argument("path", help="a drafter: model directory, DistillSpec run directory, EAGLE-3 run directory or head/")
        ex.add_argument("output_dir", help="where the exported drafter goes (must not exist or be empty)")
        ex.add_argument("--target", help="the target model directory (default: the one the drafter's run records)")
        ex.add_argument("--kind", default="auto", help="a registered drafter kind (default: recognised from the directory)")
        ex.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
        ex.add_argument("--json", action="store_true", help="print one JSON object only")

        sa = sub.add_parser("sglang-accept", help="SGLang's spec_accept_length for a served drafter beside opdplug's prediction")
        sa.add_argument("path", help="the drafter as opdplug loads it (the same weights the server serves, exported)")
        sa.add_argument("--url", required=True, help="an SGLang server serving the target with this drafter (speculative decoding)")
        sa.add_argument("--target", help="the target model directory (default: the one the drafter's run records)")
        sa.add_argument("--kind", default="auto", help="drafter kind (default: recognised from the directory)")
        sa.add_argument("--k", type=int, default=4, help="draft tokens per round; the server's --speculative-num-steps (default 4)")
        sa.add_argument("--prompts", type=int, default=32, help="held-out prompts (default 32)")
        sa.add_argument("--temperature", type=float, default=0.0, help="serving temperature (default 0, greedy)")
        sa.add_argument("--seed", type=int, default=1234, help="picks the prompts")
        sa.add_argument("--retry-budget", type=float, default=30.0, help="seconds to keep retrying a failing request (default 30)")
        sa.add_argument("--json", action="store_true", help="print one JSON object only")

        rg = sub.add_parser("regenerate", help="the target writes the assistant turns of a conversation JSONL again (resumable)")
        rg.add_argument("input", help="conversations: JSONL of OpenAI messages or ShareGPT conversations")
        rg.add_argument("output", help="JSONL to append to (ids already there are skipped: re-run to resume)")
        rg.add_argument("--target", help="the target as a local model directory")
        rg.add_argument("--sglang-url", action="append", default=[], help="an SGLang server serving the target (repeatable)")
        rg.add_argument("--tokenizer", help="with --sglang-url: a local directory with the served model's tokenizer")
        rg.add_argument("--turns", default="all", choices=("all", "last"),
                        help="all: every assistant turn, in order, after the regenerated ones (default); last: the final one")
        rg.add_argument("--batch-size", type=int, default=8, help="conversations per target call (default 8)")
        rg.add_argument("--max-new-tokens", type=int, default=256, help="budget of one turn (default 256)")
        rg.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, 0 = greedy (default 1)")
        rg.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
        rg.add_argument("--template-kwargs", default="",
                        help="chat-template switches as JSON, the serving ones, e.g. '{\"enable_thinking\": false}'")
        rg.add_argument("--seed", type=int, default=0, help="seeds each turn's draws with its conversation id (default 0)")
        rg.add_argument("--limit", type=int, default=0, help="at most this many conversations this call (default 0: all)")
        rg.add_argument("--threads", type=int, default=0, help="torch threads for a local target (default 0: torch's)")
        rg.add_argument("--json", action="store_true", help="no progress bar; print one JSON object only")

    def run(self, args) -> int:
        return {"target": self._target, "train": self._train, "eval": self._eval, "export": self._export,
                "sglang-accept": self._sglang_accept, "regenerate": self._regenerate}[args.action](args)

    # -- target -----------------------------------------------------------------------------
    def _target(self, args) -> int:
        from .target import QUICK, TargetRecipe, build_target, load_measured

        path = build_target(QUICK if args.quick else TargetRecipe(), progress=not args.json, verbose=not args.json)
        copy = Path(args.output_dir) / "target"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(path, copy)
        measured = load_measured(path)
        print(json.dumps({"cached": str(path), "target": str(copy), "accuracy": measured.get("accuracy"),
                          "params": measured.get("params")}))
        return 0

    # -- train ------------------------------------------------------------------------------
    def _train(self, args) -> int:
        from opdplug.cli import load_config
        from opdplug.config import config_to_toml_dict, dump_toml

        from .kinds import TrainRequest, get_kind, kind_options

        manager = invocation_manager(args)
        config = load_config(args.config, manager)
        options = config.plugin("drafter")
        kind = get_kind(manager.registry, options.kind)
        request_options = kind_options(kind, options)  # before anything is loaded
        train = getattr(kind, "train", None)
        if train is None:
            raise ConfigError(f"drafter.kind = {options.kind!r} has no train entry point: opdplug cannot train it")
        if not config.teacher.path:
            raise ConfigError(f"{args.config}: a drafter run needs [teacher] path (the target)")
        output_dir = Path(args.output_dir or config.run.output_dir)
        outcome = train(TrainRequest(config=config, manager=manager, options=request_options, output_dir=output_dir,
                                     steps=args.steps, quiet=args.json))
        run_dir = Path(outcome.output_dir)
        if run_dir.is_dir() and not (run_dir / "config.toml").exists():
            # 'drafter eval|export RUN' find the target (from any directory) and the task here.
            recorded = config.replace(teacher={"path": str(Path(config.teacher.path).resolve())})
            (run_dir / "config.toml").write_text(dump_toml(config_to_toml_dict(recorded)))
        if not args.json and outcome.text:
            print(outcome.text)
        print(json.dumps(outcome.to_json(options.kind)))
        return 0

    # -- eval -------------------------------------------------------------------------------
    def _eval(self, args) -> int:
        import torch

        if args.k < 1 or args.prompts < 1 or args.reps < 1:
            raise ConfigError("--k, --prompts and --reps must be at least 1")
        batch_sizes = parse_list(args.batch_sizes, int, "--batch-sizes")
        temperatures = parse_list(args.temperatures, float, "--temperatures")
        if min(batch_sizes) < 1 or min(temperatures) < 0:
            raise ConfigError("--batch-sizes must be >= 1 and --temperatures >= 0")
        path, target_dir, target, tokenizer, drafter, kind, task = load_setup(args)
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            reports = evaluate(target, drafter, task, eos_id=tokenizer.eos_token_id, k=args.k, n_prompts=args.prompts,
                               batch_sizes=batch_sizes, temperatures=temperatures, repetitions=args.reps,
                               time_it=not args.no_timing, seed=args.seed, progress=not args.json)
        finally:
            torch.set_num_threads(threads)
        if args.json:
            print(json.dumps({"drafter": str(path), "kind": kind, "target": str(target_dir), "k": args.k,
                              "reports": report_dicts(reports)}))
        else:
            print(f"{kind} drafter {path} on target {target_dir}: {args.prompts} held-out prompts, k = {args.k}")
            print(format_table(reports))
            print(LEGEND)
        return 0

    # -- export -----------------------------------------------------------------------------
    def _export(self, args) -> int:
        from .export import export_drafter
        from .kinds import KIND, detect_kind, get_kind

        path = Path(args.path)
        if not path.exists():
            raise ConfigError(f"{args.path!r} does not exist")
        registry = invocation_manager(args).registry
        name = detect_kind(path, registry.components.get(KIND, {})) if args.kind == "auto" else args.kind
        kind = get_kind(registry, name, "--kind")
        target_dir = find_target(path, args.target)
        out = export_drafter(kind, path, args.output_dir, target_dir=target_dir, overwrite=args.overwrite)
        print(json.dumps({"kind": name, "source": str(path), "target": str(target_dir), "output_dir": str(out)}))
        return 0

    # -- sglang-accept ------------------------------------------------------------------------
    def _sglang_accept(self, args) -> int:
        from .evaluation import held_out
        from .sglang_accept import served_acceptance
        from .specdec import measure

        if args.k < 1 or args.prompts < 1 or args.temperature < 0:
            raise ConfigError("--k and --prompts must be at least 1 and --temperature >= 0")
        path, target_dir, target, tokenizer, drafter, kind, task = load_setup(args)
        prompts, budgets = held_out(task, args.prompts, args.seed)
        served = served_acceptance(args.url, prompts, budgets, temperature=args.temperature, eos_id=tokenizer.eos_token_id,
                                   k=args.k, retry_budget_s=args.retry_budget)
        ours = measure(target, drafter, prompts, max_new_tokens=budgets, eos_id=tokenizer.eos_token_id, k=args.k,
                       temperature=args.temperature, time_it=False, check_identity=False, seed=args.seed,
                       progress=not args.json)
        result = {
            "drafter": str(path), "kind": kind, "target": str(target_dir), "url": args.url, "k": args.k,
            "temperature": args.temperature, "prompts": args.prompts,
            "sglang": {k: v for k, v in served.to_dict().items() if k != "completions"},
            "opdplug": {"acceptance_length": ours.acceptance_length, "closed_form": ours.closed_form_acceptance_length,
                        "position_acceptance": ours.position_acceptance,
                        "predicted_position_acceptance": ours.predicted_position_acceptance},
        }
        if args.json:
            print(json.dumps(result))
            return 0
        print(f"{kind} drafter {path} served at {args.url}; target {target_dir}; k = {args.k}, T = {args.temperature:g}, "
              f"{args.prompts} held-out prompts")
        print(f"  SGLang spec_accept_length (completion tokens / verify forwards): {served.spec_accept_length:.3f}")
        print(f"  SGLang tokens per verify round (prefill token excluded):          {served.accept_length_per_round:.3f}")
        print(f"  opdplug measured acceptance length (exact speculative sampling):  {ours.acceptance_length:.3f}")
        print(f"  opdplug predicted from 1 - TVD, (1 - b^(k+1)) / (1 - b):          {ours.closed_form_acceptance_length:.3f}")
        return 0

    # -- regenerate ---------------------------------------------------------------------------
    def _regenerate(self, args) -> int:
        import torch

        from .regenerate import LocalGenerator, RegenerateOptions, SGLangGenerator, parse_template_kwargs, regenerate

        options = RegenerateOptions(turns=args.turns, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, top_p=args.top_p, seed=args.seed, limit=args.limit,
                                    template_kwargs=parse_template_kwargs(args.template_kwargs))
        if bool(args.target) == bool(args.sglang_url):
            raise ConfigError("give the target as exactly one of --target DIR (local) or --sglang-url URL (served)")
        if args.sglang_url and not args.tokenizer:
            raise ConfigError("--sglang-url needs --tokenizer DIR: a local copy of the served model's tokenizer (its chat template)")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        generator = (LocalGenerator(args.target) if args.target else SGLangGenerator(args.sglang_url, args.tokenizer))
        summary = regenerate(args.input, args.output, generator, options, progress=not args.json)
        print(json.dumps(summary))
        return 0
