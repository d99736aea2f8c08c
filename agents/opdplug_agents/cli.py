"""``opdplug agent ...``: train and evaluate multi-turn agents from the command line.

::

    opdplug agent train CONFIG.toml [--output-dir DIR] [--steps N] [--horizons 2,4,6] [--n 50] [--json]
    opdplug agent eval MODEL_DIR --env gridnav --horizons 2,3,4 --n 50 [--env-options JSON] [--png FILE] [--json]
    opdplug agent eval expert --env swapsort --horizons 2,6,10     # the environment's expert
    opdplug agent teacher --env gridnav [--output-dir runs/agents] [--json]

``train`` is ``opdplug train`` for configs whose ``[task] name`` is ``"agent"``, followed by the
success rate of the final student by horizon on held-out episodes. ``eval`` plays held-out
episodes greedily (by default) and prints success, mean turns and the mean turn of the first
error per horizon, and writes a PNG of success against horizon; without ``--env`` /
``--env-options`` it uses those the model was trained with when its directory records them (a
run directory's ``config.toml``, a built-in teacher's ``teacher_eval.json``). ``teacher`` builds (or loads
from the cache) the built-in teacher of ``opdplug_agents.recipe`` and copies it to
``OUTPUT_DIR/ENV/teacher``, where ``configs/agent_*.toml`` look for it.

Bad input (a missing model, a malformed horizon list, a model that does not speak the agent
vocabulary) is one line on stderr and a non-zero exit, through ``opdplug``'s error handling.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from opdplug.errors import ConfigError

from .registries import env_class, horizon_range

EVAL_N = 50
"""Held-out episodes per horizon by default."""


def parse_horizons(text: str, env: Optional[str] = None, registry=None, env_options: Optional[dict] = None) -> list[int]:
    """``"2,4,6"`` -> ``[2, 4, 6]`` (sorted, unique), checked against the environment's range."""
    try:
        horizons = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--horizons must be comma-separated integers, got {text!r}") from None
    if not horizons:
        raise ConfigError("--horizons is empty; give e.g. --horizons 2,4,6")
    if env is not None:
        lo, hi = horizon_range(env, env_options, registry, "--env")
        bad = [h for h in horizons if not lo <= h <= hi]
        if bad:
            raise ConfigError(f"--horizons: {env} horizons must be in {lo}..{hi}, got {bad[0]}")
    return horizons


def check_env(name: str, key: str = "--env", registry=None) -> str:
    """``name`` if a loaded plugin registers that environment (in ``registry``, default the
    installed plugins'), else a one-line ``ConfigError`` naming ``key`` and the registered ones."""
    env_class(name, registry, key)
    return name


def default_horizons(options: dict, env: str) -> list[int]:
    """Up to four horizons spread over the config's ``min_horizon .. max_horizon``."""
    lo, hi = int(options.get("min_horizon", 2)), int(options.get("max_horizon", options.get("min_horizon", 2)))
    if hi <= lo:
        return [lo]
    step = max(1, (hi - lo) // 3)
    return sorted({*range(lo, hi + 1, step), hi})


def recorded_task(path: Path) -> dict:
    """The ``agent`` task options a model was trained with, when its directory records them: a
    run directory's ``config.toml`` (also for its ``final/``) or a built-in teacher's
    ``teacher_eval.json``; {} otherwise."""
    import tomllib

    for toml in (path / "config.toml", path.parent / "config.toml"):
        if toml.is_file() and (toml.parent == path or path.name == "final"):
            try:
                task = tomllib.loads(toml.read_text()).get("task", {})
            except (OSError, tomllib.TOMLDecodeError):
                return {}
            return dict(task.get("options", {})) if task.get("name") == "agent" else {}
    measured = path / "teacher_eval.json"
    if measured.is_file():
        try:
            recipe = json.loads(measured.read_text()).get("recipe", {})
        except (OSError, json.JSONDecodeError):
            return {}
        return {"env": recipe.get("env"), "env_options": recipe.get("env_options", {})}
    return {}


def load_agent_model(path: str):
    """``(model, tokenizer)`` from a model directory or a finished run directory; one-line
    ``ConfigError`` otherwise."""
    from opdplug_local import models as local
    from opdplug_local.evaluate import resolve_model_dir

    model_dir = resolve_model_dir(Path(path))
    tokenizer = local.load_tokenizer(str(model_dir))
    return local.load_model(str(model_dir), "MODEL_DIR"), tokenizer


def evaluate(model: Any, tokenizer: Any, env: str, horizons: list[int], n: int, *, seed: int = 1234,
             temperature: float = 0.0, max_turns: Optional[int] = None, env_options: Optional[dict] = None,
             progress: bool = True, desc: str = "eval", registry=None):
    """``success_by_horizon`` with its ``ValueError``s (e.g. a tokenizer without the agent
    words) as one-line ``ConfigError``s."""
    from .evaluate import success_by_horizon

    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    try:
        return success_by_horizon(model, tokenizer, env, horizons, n, seed=seed, temperature=temperature,
                                  max_turns=max_turns, env_options=env_options, progress=progress, progress_desc=desc,
                                  registry=registry)
    except ValueError as exc:
        raise ConfigError(f"agent eval: {exc}") from None


def print_report(name: str, report) -> None:
    print(f"{report.env}: held-out episodes, success rate by horizon")
    print(f"{'horizon':<9}{'success':<9}{'turns':<8}{'episodes':<22}first error: mean turn; episodes with none")
    for h, r in report.results.items():
        hist = r.first_error_histogram
        mean = f"{r.mean_first_error:.2f}" if r.mean_first_error is not None else "-"
        print(f"{h:<9}{r.success:<9.3f}{r.mean_turns:<8.2f}{f'{r.n} ({r.distinct} distinct)':<22}{mean}; {hist['none']}/{r.n}")


class AgentCommand:
    help = "multi-turn agents: train on an agent config, evaluate success by horizon, build the built-in teacher"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        train = sub.add_parser("train", help="train as an agent CONFIG.toml describes, then report success by horizon")
        train.add_argument("config", help="a TOML config with [task] name = \"agent\"")
        train.add_argument("--output-dir", help="override run.output_dir")
        train.add_argument("--steps", type=int, help="override run.steps")
        train.add_argument("--horizons", help="horizons to evaluate (default: spread over min_horizon..max_horizon)")
        train.add_argument("--n", type=int, default=EVAL_N, help=f"held-out episodes per horizon (default {EVAL_N})")
        train.add_argument("--json", action="store_true", help="print one JSON object only")

        ev = sub.add_parser("eval", help="success rate by horizon of a model (or 'expert') on held-out episodes")
        ev.add_argument("path", help="a model directory, a finished run directory, or 'expert'")
        ev.add_argument("--env", help="a registered environment ('opdplug plugins' lists them; default: the one the "
                                      "model was trained on, when its directory records it, else gridnav)")
        ev.add_argument("--horizons", default="2,4,6", help="comma-separated horizons (default 2,4,6)")
        ev.add_argument("--n", type=int, default=EVAL_N, help=f"held-out episodes per horizon (default {EVAL_N})")
        ev.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        ev.add_argument("--max-turns", type=int, default=0, help="turn limit (0: the environment's default)")
        ev.add_argument("--env-options", help="JSON object of other environment options, e.g. '{\"size\": 6}' "
                                              "(default: the model's recorded ones for that environment, else none)")
        ev.add_argument("--seed", type=int, default=1234, help="picks the episodes")
        ev.add_argument("--png", help="where to write the plot (default: PATH/success_vs_horizon_ENV.png; '' for none)")
        ev.add_argument("--json", action="store_true", help="print one JSON object only")

        te = sub.add_parser("teacher", help="build (or load from the cache) the built-in teacher of an environment")
        te.add_argument("--env", default="gridnav", help="an environment with a built-in recipe")
        te.add_argument("--output-dir", default="runs/agents", help="copy the teacher to OUTPUT_DIR/ENV/teacher")
        te.add_argument("--quick", action="store_true", help="a tiny recipe (for tests; not a good teacher)")
        te.add_argument("--json", action="store_true", help="print one JSON object only")

    def run(self, args) -> int:
        return {"train": self._train, "eval": self._evaluate, "teacher": self._teacher}[args.action](args)

    # -- train ------------------------------------------------------------------------------
    def _train(self, args) -> int:
        from opdplug_local import models as local
        from opdplug.cli import load_config, with_run_overrides
        from opdplug.loop import train
        from opdplug.manager import make_plugin_manager

        manager = make_plugin_manager()
        config = load_config(args.config, manager)
        if config.task.name != "agent":
            raise ConfigError(f"{args.config}: [task] name is {config.task.name!r}; 'opdplug agent train' needs \"agent\" (use 'opdplug train')")
        options = dict(config.task.options)
        env = check_env(options.get("env", "gridnav"), "task.options.env", manager.registry)
        horizons = parse_horizons(args.horizons, env, manager.registry) if args.horizons else default_horizons(options, env)
        config = with_run_overrides(config, args)
        result = train(config, manager, progress_desc=f"agent train ({env})")
        last = result.history[-1] if result.history else {}
        out = {"output_dir": str(result.output_dir), "steps": result.steps_done,
               "final_model": str(result.final_model_dir) if result.final_model_dir else None,
               "last_loss": last.get("loss")}
        if result.final_model_dir is not None:
            model, tokenizer = local.load_model(str(result.final_model_dir), "final"), local.load_tokenizer(str(result.final_model_dir))
            report = evaluate(model, tokenizer, env, horizons, args.n, max_turns=options.get("max_turns") or None,
                              env_options=options.get("env_options"), progress=not args.json, desc="eval",
                              registry=manager.registry)
            out["success"] = {str(h): s for h, s in report.success.items()}
            (Path(result.output_dir) / "success_by_horizon.json").write_text(json.dumps(report.to_dict(), indent=1))
            if not args.json:
                print_report("student", report)
        print(json.dumps(out))
        return 0

    # -- eval -------------------------------------------------------------------------------
    def _evaluate(self, args) -> int:
        from opdplug_local import tiny

        from .evaluate import EXPERT, plot_success
        from .task import AgentTask

        recorded = {} if args.path == EXPERT else recorded_task(Path(args.path))
        env = check_env(args.env or recorded.get("env") or "gridnav")
        try:
            env_options = (json.loads(args.env_options) if args.env_options is not None
                           else dict(recorded.get("env_options") or {}) if recorded.get("env") == env else {})
        except json.JSONDecodeError:
            raise ConfigError(f"--env-options must be a JSON object, got {args.env_options!r}") from None
        if not isinstance(env_options, dict):
            raise ConfigError(f"--env-options must be a JSON object, got {args.env_options!r}")
        horizons = parse_horizons(args.horizons, env, env_options=env_options)
        if args.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
        if args.path == EXPERT and env_class(env).vocabulary():
            model, tokenizer = EXPERT, tiny.build_tokenizer(AgentTask.words())
        elif args.path == EXPERT:  # a game without a closed vocabulary: any chat tokenizer carries the expert's text
            from opdplug.testing.models import build_bpe_tokenizer

            model, tokenizer = EXPERT, build_bpe_tokenizer(vocab_size=300)
        else:
            model, tokenizer = load_agent_model(args.path)
        report = evaluate(model, tokenizer, env, horizons, args.n, seed=args.seed, temperature=args.temperature,
                          max_turns=args.max_turns or None, env_options=env_options, progress=not args.json)
        png = args.png
        if png is None:
            png = "" if args.path == EXPERT else str(Path(args.path) / f"success_vs_horizon_{env}.png")
        if png:
            Path(png).parent.mkdir(parents=True, exist_ok=True)
            name = EXPERT if args.path == EXPERT else Path(args.path).name
            plot_success({name: report}, png, title=f"{env}: success vs horizon ({args.n} held-out episodes each)")
        if args.json:
            print(json.dumps({**report.to_dict(), "model": args.path, "png": png or None}))
        else:
            print_report(args.path, report)
            if png:
                print(f"wrote {png}")
        return 0

    # -- teacher ----------------------------------------------------------------------------
    def _teacher(self, args) -> int:
        from .recipe import QUICK, RECIPES, train_teacher

        recipes = QUICK if args.quick else RECIPES
        if args.env not in recipes:
            raise ConfigError(f"--env {args.env!r} has no built-in teacher recipe; known: {', '.join(sorted(recipes))}")
        path = train_teacher(recipes[args.env], progress=not args.json, verbose=not args.json)
        target = Path(args.output_dir) / args.env / "teacher"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(path, target)
        measured = json.loads((path / "teacher_eval.json").read_text()) if (path / "teacher_eval.json").is_file() else {}
        out = {"env": args.env, "cached": str(path), "teacher": str(target), "success": measured.get("success")}
        print(json.dumps(out))
        return 0


COMMANDS = {"agent": AgentCommand()}
"""Sub-commands this plugin adds to ``opdplug`` (registered by ``opdplug_agents.plugin``)."""
