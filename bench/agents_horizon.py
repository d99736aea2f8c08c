"""Success against horizon: behaviour cloning vs agent OPD (vs DAgger, SCoRe) at equal teacher calls.

One command:

    .venv/bin/python bench/agents_horizon.py              # the full run (about 30-40 min with a cached teacher)
    .venv/bin/python bench/agents_horizon.py --reduced    # 2000 calls per method, 60 episodes per cell
    .venv/bin/python bench/agents_horizon.py --quick      # seconds; checks the plumbing only

1. Build (or load from the cache) the built-in teacher of the environment
   (``opdplug_agents.recipe``: BC on expert episodes, then DAgger with expert labels).
2. Give a 4x smaller student (``tiny`` size ``student``) a short BC warm start on teacher
   episodes (``agent_teacher``): every method starts from this SAME student (OPD from a random
   student stalls: it has no format to be corrected on).
3. From it, train each method until it has used the same number of teacher calls:

   ==========  =================================================================================
   BC          ``agent_teacher``: the teacher plays whole episodes; the student imitates them (nll)
   OPD         ``agent``: the student plays; the teacher scores every token (reverse KL, full vocab)
   DAgger      ``agent_dagger``: the student plays; the teacher writes its action at visited states
   SCoRe       ``agent_score``: the student plays; a locator finds the first wrong step, the teacher
               rewrites it, the student resumes; OPD on the corrected trajectories
   ==========  =================================================================================

   DAgger and SCoRe run only when their samplers are registered (a note is printed otherwise).

   **Teacher-call convention.** One teacher call = one teacher generation of one action, or
   one teacher scoring pass (a forward pass) over one episode / batch row. So a BC episode of T
   turns costs T calls, an OPD episode 1 (the loss's scoring pass), a DAgger row 1 (its
   label), a SCoRe episode 1 per rewritten key step + 1 per row scored by the loss (+ the
   locator's own passes: 0 for the ``expert`` locator, 1 per episode for ``teacher_logprob``).
   The counts come from the samplers' own accounting (``opdplug_agents.accounting``:
   ``agent/teacher_calls``, which includes ``agent/teacher_scored_rows``; ``agent/teacher_tokens``
   beside it); a method stops after the step that
   reaches the budget, so each overshoots by less than one step's cost (the JSON has the exact
   numbers). The shared warm start's calls are reported apart.
4. Evaluate the teacher, the warm start and every student greedily on held-out episodes at each
   horizon; print a table whose last line is the headline; write
   ``runs/bench/agents_horizon.json`` and ``runs/bench/agents_horizon.png``.

Headline goal (the issue's): at the longest horizon, the best of SCoRe/OPD within 5 points of
the teacher while BC falls at least 15 points behind.

Environment: ``gridnav`` on a 4x4 grid with walls (density 0.1), horizons 1..4, the built-in
teacher's setting. Its behaviour-cloning failures are compounding errors: one bump into a wall
gives an observation that expert episodes never contain, and a BC model repeats the bump, then
writes malformed calls. ``--env-options fatal_errors=true`` (any ``KEY=VALUE``, repeatable) trains
the students on, and evaluates every model on, a variant of the environment (there: a wrong move
ends the episode, failed); the teacher stays the recipe's cached one. ``calc_lookup`` (``--env calc_lookup``) has a perfect teacher but a
student that needs 600+ BC steps before it copies a single name: too slow for a warm start here.

Learning rate: each method decays its own (cosine, from ``lr`` to ``min_lr_ratio * lr``) over
the steps its budget buys. A method's steps cost different numbers of teacher calls (an OPD
step 16, a BC step about 65), so ``probe_steps`` steps of it are run first, and thrown away, to
measure that (``probe_calls_per_step`` in the JSON). A constant rate left OPD's success at h = 4
swinging by 0.1 between checkpoints 25 steps apart.

The measured tables (full runs over three seeds, the reduced runs, the ``fatal_errors`` variant and
the learning curves that chose the schedule) are in the README's "Agents" section.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from opdplug.cli import quiet_transformers  # noqa: E402
from opdplug.hookspecs import hookimpl  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and budgets of the bench."""

    env: str = "gridnav"
    """Environment; its teacher recipe (and environment options) come from
    ``opdplug_agents.recipe.RECIPES``, the students train on the recipe's horizon range."""
    eval_horizons: tuple = (2, 3, 4)
    """Horizons evaluated; the last is the headline's."""
    eval_n: int = 200
    """Held-out episodes per horizon and model."""
    warm_steps: int = 400
    """BC warm-start steps shared by every method."""
    warm_sampler: str = "agent_expert"
    """Who plays the warm start's episodes: ``agent_expert`` (a program: no teacher calls, and
    no teacher generation time) or ``agent_teacher`` (counted apart, in the JSON)."""
    warm_lr: float = 2e-3
    """Warm-start learning rate (linear warm-up over 20 steps, cosine to 10%)."""
    batch: int = 16
    """Episodes per step (every phase)."""
    lr: float = 1e-3
    """Students' peak learning rate after the warm start."""
    lr_schedule: str = "cosine"
    """``cosine`` (to ``min_lr_ratio`` over each method's own budget, see ``schedule_steps``) or
    ``constant``."""
    min_lr_ratio: float = 0.1
    probe_steps: int = 3
    """Steps of each method run first to measure its teacher calls per step (``cosine`` only)."""
    budget: int = 8000
    """Teacher calls per method after the warm start."""
    temperature: float = 1.0
    """Rollout temperature of every sampler (students and teacher)."""
    methods: tuple = ("BC", "OPD", "DAgger", "SCoRe", "SCoRe-onpolicy")
    threads: int = 1
    seed: int = 0
    env_options: dict = dataclasses.field(default_factory=dict)
    """Extra environment options for the students' training and every evaluation (``--env-options``),
    e.g. ``{"fatal_errors": True}``. The teacher is the recipe's (trained, and cached, without them)."""


FULL = BenchConfig()
REDUCED = dataclasses.replace(FULL, budget=2000, eval_n=60)
QUICK = dataclasses.replace(FULL, eval_horizons=(1, 2), eval_n=4, warm_steps=2, batch=4, budget=12, probe_steps=1)

METHODS: dict[str, dict] = {
    "BC": dict(sampler="agent_teacher", rollout={}, loss={"support": "sampled", "estimator": "nll"}, scorer="none"),
    "OPD": dict(sampler="agent", rollout={}, loss={"support": "full", "divergence": "reverse_kl"}, scorer="local"),
    "DAgger": dict(sampler="agent_dagger", rollout={"options": {"teacher_actor": "teacher", "states_per_episode": 2}},
                   loss={"support": "sampled", "estimator": "nll"}, scorer="none"),
    # teacher_logprob locator on the least likely token of each action: a mean over the ~12 tokens
    # of a tool call (all but one pure format) would hide a wrong direction or name.
    "SCoRe": dict(sampler="agent_score", rollout={"options": {"locator": "teacher_logprob", "key_step_actor": "teacher",
                                                              "locator_options": {"reduce": "min", "threshold": -2.0}}},
                  loss={"support": "full", "divergence": "reverse_kl"}, scorer="local",
                  credit={"scheme": "turn_level"}),
    # SCoRe's new variant: the student re-samples the key step from the verified prefix (on-policy,
    # scored by the loss's teacher) instead of copying teacher tokens; the key step's reward is its
    # optimality; locator answers cached, at most half the episodes located per step.
    "SCoRe-onpolicy": dict(sampler="agent_score", rollout={"options": {
        "locator": "teacher_logprob", "key_step_actor": "student", "key_reward": "optimal", "locator_budget": 8,
        "locator_options": {"reduce": "min", "threshold": -2.0}}},
        loss={"support": "full", "divergence": "reverse_kl"}, scorer="local", credit={"scheme": "turn_level"}),
    # SCoRe with a locator that costs no teacher call (the environment's expert: a verifier), the
    # teacher writing the key step: tests whether the locator's cost is what SCoRe loses by.
    "SCoRe-freelocator": dict(sampler="agent_score", rollout={"options": {"locator": "expert", "key_step_actor": "teacher"}},
                              loss={"support": "full", "divergence": "reverse_kl"}, scorer="local",
                              credit={"scheme": "turn_level"}),
}
"""How each method trains (the ``[rollout]``, ``[loss]``, ``[teacher] scorer`` and ``[credit]``
parts of its config)."""


class BudgetReached(Exception):
    """Raised by ``TeacherBudget`` after the step that used up the budget."""


class TeacherBudget:
    """A plugin: counts teacher calls per step (see the module docstring) and, once ``budget``
    is reached, exports the student to ``save_dir`` and stops the run (``BudgetReached``)."""

    def __init__(self, budget: int, save_dir: Path):
        self.budget, self.save_dir = budget, save_dir
        self.used = 0.0
        self.steps = 0
        self.detail: dict[str, float] = {}

    @hookimpl(trylast=True)  # after the accounting hook has put the step's counters in metrics
    def opd_step_end(self, ctx, step, metrics):
        for key in ("agent/teacher_actions", "agent/teacher_scorings", "agent/judge_calls", "agent/teacher_scored_rows",
                    "agent/teacher_tokens", "agent/expert_actions", "agent/episodes", "agent/rows"):
            self.detail[key.split("/")[1]] = self.detail.get(key.split("/")[1], 0.0) + float(metrics.get(key, 0.0))
        self.used += float(metrics.get("agent/teacher_calls", 0.0))  # scored rows included (one definition)
        self.steps = step + 1
        if self.used >= self.budget:

            ctx.manager.hook.opd_save_model(ctx=ctx, directory=self.save_dir)
            raise BudgetReached()


def _config(cfg: BenchConfig, recipe, manager, output_dir: Path, **sections):
    from opdplug.config import parse_config

    data = {
        "run": {"output_dir": str(output_dir), "seed": cfg.seed, "threads": cfg.threads, "resume": False,
                "log_every": 10, "batch_size": cfg.batch, "lr": cfg.lr, "adam_betas": [0.9, 0.98]},
        "task": {"name": "agent", "options": recipe.task_options()},
        "rollout": {"temperature": cfg.temperature},
    }
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return parse_config(data, manager.plugin_tables())


def run_method(cfg: BenchConfig, recipe, name: str, spec: dict, student_dir: Path, teacher_dir: Path, out: Path,
               budget_calls: Optional[float] = None, steps: Optional[int] = None, tag: str = "") -> dict:
    """Train one method from the warm start until the teacher budget is used; its model dir and counts.

    ``steps``: the length of the learning-rate schedule (and the most steps run); by default
    enough steps for the budget at one call per episode. ``budget_calls``: default ``cfg.budget``.
    """
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager

    run_dir = out / (name.lower() + tag)
    save = run_dir / "final"
    budget = TeacherBudget(cfg.budget if budget_calls is None else budget_calls, save)
    manager = make_plugin_manager([budget])
    max_steps = steps or cfg.budget // cfg.batch + 2  # every method spends >= 1 call per episode
    schedule = ({"lr_schedule": "cosine", "min_lr_ratio": cfg.min_lr_ratio} if cfg.lr_schedule == "cosine"
                else {"lr_schedule": "constant"})
    config = _config(
        cfg, recipe, manager, run_dir,
        run={"steps": max_steps, "seed": cfg.seed + 1, **schedule},
        student={"path": str(student_dir)},
        teacher={"path": str(teacher_dir), "scorer": spec["scorer"]},
        rollout={"sampler": spec["sampler"], **spec.get("rollout", {})},
        loss=spec["loss"], credit=spec.get("credit", {}),
    )
    t0 = time.perf_counter()
    try:
        result = train(config, manager, progress_desc=f"{name} (budget {cfg.budget} teacher calls)")
        final = result.final_model_dir
    except BudgetReached:
        final = save
    return {"model_dir": str(final), "steps": budget.steps, "teacher_calls": budget.used, "counts": budget.detail,
            "train_seconds": time.perf_counter() - t0, "schedule_steps": max_steps}


def schedule_steps(cfg: BenchConfig, recipe, name: str, spec: dict, student_dir: Path, teacher_dir: Path,
                   out: Path) -> tuple[int, float]:
    """How many steps ``cfg.budget`` buys this method: ``cfg.probe_steps`` steps of it are run
    (and thrown away) to measure its teacher calls per step. Each method's learning rate then
    decays over its own budget, whatever a step of it costs. Returns (steps, calls per step)."""
    probe = run_method(cfg, recipe, name, spec, student_dir, teacher_dir, out, budget_calls=float("inf"),
                       steps=cfg.probe_steps, tag="-probe")
    per_step = max(probe["teacher_calls"] / max(probe["steps"], 1), 1.0)
    shutil.rmtree(out / (name.lower() + "-probe"), ignore_errors=True)
    return int(-(-cfg.budget // per_step)) + 1, per_step


def parse_env_options(parser: argparse.ArgumentParser, items: list) -> dict:
    """``["fatal_errors=true", "size=5"]`` -> ``{"fatal_errors": True, "size": 5}`` (each VALUE read
    as JSON, else kept as text); a malformed item is a one-line ``--env-options`` error."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--env-options: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--reduced", action="store_true", help="smaller budgets (a few minutes)")
    size.add_argument("--quick", action="store_true", help="seconds: plumbing only, numbers meaningless")
    parser.add_argument("--env", help="environment (default: the config's)")
    parser.add_argument("--budget", type=int, help="teacher calls per method")
    parser.add_argument("--seed", type=int, help="training seed (warm start, every method); the held-out episodes stay the same")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)} (default: the config's)")
    parser.add_argument("--env-options", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment option for the students' training and the evaluation, VALUE as JSON "
                             "(true, 0.1, \"text\"; repeatable), e.g. fatal_errors=true; the teacher stays the recipe's")
    parser.add_argument("--output-dir", default="runs/bench", help="where agents_horizon.{json,png} go")
    args = parser.parse_args(argv)

    cfg = QUICK if args.quick else REDUCED if args.reduced else FULL
    if args.env:
        cfg = dataclasses.replace(cfg, env=args.env)
    if args.budget:
        cfg = dataclasses.replace(cfg, budget=args.budget)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.env_options:
        cfg = dataclasses.replace(cfg, env_options=parse_env_options(parser, args.env_options))
    if args.methods:
        chosen = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in chosen if m not in METHODS]
        if unknown:
            parser.error(f"--methods: unknown {unknown[0]!r}; known: {', '.join(METHODS)}")
        cfg = dataclasses.replace(cfg, methods=chosen)
    torch.set_num_threads(cfg.threads)
    quiet_transformers()

    from opdplug_local import models as local, tiny
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager
    from opdplug_agents import recipe as recipes
    from opdplug_agents.evaluate import format_table, plot_success, success_by_horizon

    t0 = time.perf_counter()
    out = Path(args.output_dir)
    work = out / "agents_horizon"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    # (a) the teacher
    book = recipes.QUICK if args.quick else recipes.RECIPES
    if cfg.env not in book:
        raise SystemExit(f"agents_horizon: no teacher recipe for {cfg.env!r}; known: {', '.join(sorted(book))}")
    recipe = book[cfg.env]
    teacher_dir = recipes.train_teacher(recipe)
    if cfg.env_options:  # the students train, and everyone is evaluated, on the variant; the teacher is cached as is
        recipe = dataclasses.replace(recipe, env_options={**recipe.env_options, **cfg.env_options})
    teacher_seconds = time.perf_counter() - t0

    # (b) the shared warm start, then each method at the same teacher budget
    registered = make_plugin_manager().registry.components["samplers"]
    warm_budget = TeacherBudget(10**12, work / "unused")
    manager = make_plugin_manager([warm_budget])
    config = _config(
        cfg, recipe, manager, work / "warm_start",
        run={"steps": cfg.warm_steps, "lr": cfg.warm_lr, "warmup_steps": min(20, cfg.warm_steps - 1),
             "lr_schedule": "cosine", "min_lr_ratio": 0.1},
        student={"tiny": "student", "init_seed": 2},
        teacher={"path": str(teacher_dir), "scorer": "none"},
        rollout={"sampler": cfg.warm_sampler},
        loss={"support": "sampled", "estimator": "nll"},
    )
    warm = train(config, manager, progress_desc=f"warm start (BC, {cfg.warm_sampler})")
    results: dict = {
        "config": dataclasses.asdict(cfg), "recipe": dataclasses.asdict(recipe), "teacher_dir": str(teacher_dir),
        "teacher_calls_convention": "one teacher generation of one action, or one teacher scoring pass of one episode/row",
        "warm_start": {"steps": cfg.warm_steps, "teacher_calls": warm_budget.used, "counts": warm_budget.detail},
        "methods": {}, "skipped": {},
    }
    for name in cfg.methods:
        spec = METHODS[name]
        if spec["sampler"] not in registered:
            note = f"sampler {spec['sampler']!r} is not registered (install a plugin that provides it)"
            print(f"note: skipping {name}: {note}")
            results["skipped"][name] = note
            continue
        steps, per_step = None, None
        if cfg.lr_schedule == "cosine":
            steps, per_step = schedule_steps(cfg, recipe, name, spec, warm.final_model_dir, teacher_dir, work)
        results["methods"][name] = run_method(cfg, recipe, name, spec, warm.final_model_dir, teacher_dir, work, steps=steps)
        results["methods"][name]["probe_calls_per_step"] = per_step

    # (c) evaluation on held-out episodes
    tokenizer = local.load_tokenizer(str(teacher_dir))
    models = {"teacher": teacher_dir, "warm start": warm.final_model_dir,
              **{name: Path(info["model_dir"]) for name, info in results["methods"].items()}}
    reports = {}
    for name, path in models.items():
        model = local.load_model(str(path), name)
        reports[name] = success_by_horizon(model, tokenizer, cfg.env, list(cfg.eval_horizons), cfg.eval_n, seed=4321,
                                           env_options=recipe.env_options, progress=True, progress_desc=f"eval {name}")
    results["params"] = {"teacher": tiny.count_parameters(local.load_model(str(teacher_dir), "teacher")),
                         "student": tiny.count_parameters(local.load_model(str(warm.final_model_dir), "student"))}
    results["eval"] = {name: r.to_dict() for name, r in reports.items()}
    results["success"] = {name: {str(h): s for h, s in r.success.items()} for name, r in reports.items()}

    # (d) table, headline, files
    H = max(cfg.eval_horizons)
    teacher_s = reports["teacher"].success[H]
    contenders = {n: reports[n].success[H] for n in ("SCoRe", "SCoRe-onpolicy", "SCoRe-freelocator", "OPD") if n in reports}
    best_name = max(contenders, key=contenders.get) if contenders else None
    bc_s = reports["BC"].success[H] if "BC" in reports else None
    met = (best_name is not None and bc_s is not None
           and contenders[best_name] >= teacher_s - 0.05 and bc_s <= teacher_s - 0.15)
    results["headline"] = {"horizon": H, "teacher": teacher_s, "best_of_score_opd": best_name,
                           "best_success": contenders.get(best_name), "bc": bc_s, "goal_met": met}
    scores = {n: reports[n].success[H] for n in ("SCoRe", "SCoRe-onpolicy", "SCoRe-freelocator") if n in reports}
    if scores and "OPD" in reports:  # the SCoRe check: does any SCoRe variant match OPD at the longest horizon?
        results["headline"]["score_vs_opd"] = {**scores, "OPD": reports["OPD"].success[H],
                                               "score_matches_opd": max(scores.values()) >= reports["OPD"].success[H]}
    results["wall_seconds"] = time.perf_counter() - t0
    results["teacher_seconds"] = teacher_seconds

    print()
    env_label = cfg.env + "".join(f" {k}={json.dumps(v)}" for k, v in cfg.env_options.items())
    print(f"{env_label}: greedy success on held-out episodes by horizon ({cfg.eval_n} per cell); "
          f"params teacher {results['params']['teacher']:,}, student {results['params']['student']:,}")
    print(f"each method: warm start + {cfg.budget} teacher calls "
          + ", ".join(f"{n} {info['teacher_calls']:.0f} in {info['steps']} steps" for n, info in results["methods"].items()))
    print(format_table(reports))
    best_text = f"({best_name}) {contenders[best_name]:.2f}" if best_name else "n/a"
    bc_text = f"{bc_s:.2f}" if bc_s is not None else "n/a"
    headline = f"headline h={H}: teacher {teacher_s:.2f} | best of SCoRe/OPD {best_text} | BC {bc_text}"
    headline += (" -> goal (SCoRe/OPD within 5 pts of the teacher, BC >= 15 pts behind): "
                 + ("MET" if met else "NOT MET") + f"  [{results['wall_seconds']:.0f} s]")
    print(headline)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agents_horizon.json").write_text(json.dumps(results, indent=1, default=list))
    plot_success(reports, out / "agents_horizon.png",
                 title=f"{env_label}: success vs horizon at {cfg.budget} teacher calls per method")
    return results


if __name__ == "__main__":
    main()
