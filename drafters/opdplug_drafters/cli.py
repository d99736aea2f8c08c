"""``opdplug drafter ...``: build the built-in target, train, evaluate and export drafters.

::

    opdplug drafter target [--output-dir runs/drafters] [--quick] [--json]
    opdplug drafter train CONFIG.toml [--output-dir DIR] [--steps N] [--json]
    opdplug drafter eval DRAFTER [--target DIR] [--kind auto] [--k 4] [--batch-sizes 1,8]
                         [--temperatures 0,1] [--prompts 32] [--reps 3] [--no-timing] [--json]
    opdplug drafter export DRAFTER OUTPUT_DIR [--target DIR] [--kind auto] [--overwrite] [--json]
    opdplug drafter sglang-accept DRAFTER --url URL [--target DIR] [--k 4] [--prompts 32]
                         [--temperature 0] [--retry-budget 30] [--json]

``target`` builds (or loads from the cache) the built-in SumChain target of ``target.py`` and
copies it to ``OUTPUT_DIR/target``, where ``configs/drafter_*.toml`` look for it. ``train`` runs
a ``[drafter]`` config: ``kind = "standalone"`` is DistillSpec through the ordinary OPD loop,
``kind = "eagle3"`` calls ``opdplug_drafters.eagle3.train_eagle3``; both end with
``acceptance_vs_steps.png`` in the run directory and the exact acceptance of the result.
``eval`` prints the speculative-decoding report (acceptance length with the bonus token,
per-position acceptance measured and predicted by 1 - TVD, tokens/s and speed-up over
target-only decoding) at every batch size and temperature asked. ``export`` writes what SGLang
loads (``opdplug_drafters.export.export_drafter``, audited). ``sglang-accept`` puts the
``spec_accept_length`` an SGLang server serving the export reports beside opdplug's measured and
predicted acceptance on the same prompts (``sglang_accept.py``; a GPU check).

Bad input is one line on stderr and a non-zero exit, through ``opdplug``'s error handling.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tomllib
from pathlib import Path
from typing import Any, Optional

from opdplug.errors import ConfigError

from .evaluation import LEGEND, evaluate, format_table


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
    from opdplug.loop import build_task

    from .target import load_measured

    task = _run_config(drafter).get("task")
    if task:
        return build_task(manager.registry, task.get("name", "sumchain"), task.get("options", {}), tokenizer)
    recipe = load_measured(target_dir).get("recipe", {})
    options = {k: recipe[k] for k in ("min_len", "max_len") if k in recipe}
    return build_task(manager.registry, "sumchain", options, tokenizer)


def load_drafter(path: Path, kind: str, target, manager):
    from .kinds import detect_kind

    kinds = manager.registry.components.get("drafter_kinds", {})
    if kind == "auto":
        kind = detect_kind(path, kinds)
    if kind not in kinds:
        raise ConfigError(f"--kind {kind!r} is unknown; registered drafter kinds: {', '.join(sorted(kinds))}")
    return kinds[kind].load(path, target), kind


def load_setup(args) -> tuple:
    """``(path, target_dir, target, tokenizer, drafter, kind, task)`` for ``args.path``,
    ``args.target`` and ``args.kind``; one-line errors for what is missing."""
    from opdplug_local import models as local
    from opdplug.manager import make_plugin_manager

    path = Path(args.path)
    if not path.exists():
        raise ConfigError(f"{args.path!r} does not exist")
    manager = make_plugin_manager()
    target_dir = find_target(path, args.target)
    target = local.load_model(str(target_dir), "--target").eval()
    tokenizer = local.load_tokenizer(str(target_dir))
    drafter, kind = load_drafter(path, args.kind, target, manager)
    return path, target_dir, target, tokenizer, drafter, kind, task_for(path, target_dir, tokenizer, manager)


def report_dicts(reports) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.to_dict().items()} for r in reports]


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
        tr.add_argument("--steps", type=int, help="override run.steps (or drafter.eagle3.steps)")
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
        ex.add_argument("--kind", default="auto", help="standalone | eagle3 (default: recognised from the directory)")
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

    def run(self, args) -> int:
        return {"target": self._target, "train": self._train, "eval": self._eval, "export": self._export,
                "sglang-accept": self._sglang_accept}[args.action](args)

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
        from opdplug.cli import load_config, with_run_overrides
        from opdplug.manager import make_plugin_manager

        manager = make_plugin_manager()
        config = load_config(args.config, manager)
        options = config.plugin("drafter")
        if options.kind == "eagle3":
            return self._train_eagle3(args, config, manager, options)
        config = with_run_overrides(config, args)
        if not config.teacher.path:
            raise ConfigError(f"{args.config}: a DistillSpec run needs [teacher] path (the target)")
        from .distillspec import read_eval, train_distillspec

        result = train_distillspec(config, manager)
        rows = read_eval(result.output_dir)
        out = {"kind": "standalone", "output_dir": str(result.output_dir), "steps": result.steps_done,
               "final_model": str(result.final_model_dir) if result.final_model_dir else None,
               "last_loss": result.history[-1].get("loss") if result.history else None,
               "acceptance": {key: value["accept_len"] for key, value in rows[-1].items() if key.startswith("T")} if rows else None,
               "png": str(Path(result.output_dir) / "acceptance_vs_steps.png") if rows else None}
        if not args.json and rows:
            print(f"held-out acceptance length (k = {options.draft_tokens}, bonus incl.) by step:")
            for row in rows:
                print(f"  step {row['step']:>5}: " + "  ".join(f"T={key[1:]} {value['accept_len']:.2f}"
                                                          for key, value in row.items() if key.startswith("T")))
        print(json.dumps(out))
        return 0

    def _train_eagle3(self, args, config, manager, options) -> int:
        import dataclasses

        from opdplug_local import models as local
        from opdplug.loop import build_task

        from .options import eagle3_options

        try:
            from .eagle3 import plot_metrics, train_eagle3
        except ImportError as exc:
            raise ConfigError(f"drafter.kind = \"eagle3\" needs opdplug_drafters.eagle3.train_eagle3, which is not available: {exc}") from None
        if not config.teacher.path:
            raise ConfigError(f"{args.config}: an EAGLE-3 run needs [teacher] path (the target)")
        eagle = eagle3_options(options.eagle3)
        changes: dict[str, Any] = {}
        if args.steps:
            changes["steps"] = args.steps
        if args.json:
            changes["progress"] = False
        eagle = dataclasses.replace(eagle, **changes)
        output_dir = Path(args.output_dir or config.run.output_dir)
        tokenizer = local.load_tokenizer(config.teacher.path) if Path(config.teacher.path).is_dir() else None
        if tokenizer is None:
            raise ConfigError(f"teacher.path = {config.teacher.path!r} is not a directory; build it with 'opdplug drafter target'")
        task = build_task(manager.registry, config.task.name, config.task.options, tokenizer)
        result = train_eagle3(config.teacher.path, tokenizer, eagle, output_dir, task=task)
        png = plot_metrics(result.output_dir, Path(result.output_dir) / "acceptance_vs_steps.png")
        # The training proxy is teacher-forced; measure the head the way it will be served.
        target = local.load_model(config.teacher.path, "teacher.path")
        drafter, _ = load_drafter(Path(result.output_dir), "eagle3", target, manager)
        reports = evaluate(target, drafter, task, eos_id=tokenizer.eos_token_id, k=options.draft_tokens,
                           n_prompts=options.eval_prompts, batch_sizes=(options.eval_batch_size,),
                           temperatures=tuple(options.eval_temperatures), time_it=False, seed=options.eval_seed)
        out = {"kind": "eagle3", "output_dir": str(result.output_dir), "head_dir": str(result.head_dir),
               "steps": result.steps_done, "train_accept_len_proxy": result.final_eval.get("accept_len"),
               "acceptance": {f"T{r.temperature:g}": r.acceptance_length for r in reports}, "png": str(png)}
        (Path(result.output_dir) / "drafter_eval.json").write_text(json.dumps(report_dicts(reports), indent=1))
        if not args.json:
            print(format_table(reports))
        print(json.dumps(out))
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
        from opdplug.manager import make_plugin_manager

        from .export import export_drafter
        from .kinds import detect_kind

        path = Path(args.path)
        if not path.exists():
            raise ConfigError(f"{args.path!r} does not exist")
        manager = make_plugin_manager()
        kind = detect_kind(path, manager.registry.components.get("drafter_kinds", {})) if args.kind == "auto" else args.kind
        target_dir = find_target(path, args.target)
        source = path
        if kind == "standalone":
            from opdplug_local.evaluate import resolve_model_dir

            source = resolve_model_dir(path)
        out = export_drafter(kind, source, args.output_dir, target_dir=target_dir, overwrite=args.overwrite)
        print(json.dumps({"kind": kind, "source": str(source), "target": str(target_dir), "output_dir": str(out)}))
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
