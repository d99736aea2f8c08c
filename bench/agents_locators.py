"""Earliest-error locators against the expert's labels, and where first errors fall.

One command:

    .venv/bin/python bench/agents_locators.py            # the full run (minutes, teachers cached)
    .venv/bin/python bench/agents_locators.py --quick    # seconds; checks the plumbing only
    .venv/bin/python bench/agents_locators.py --judge-url http://127.0.0.1:30000/v1/chat/completions --judge-model NAME

1. Load (or build once) the built-in teacher of each environment (``opdplug_agents.recipe.
   RECIPES``: ``gridnav`` 4x4 with walls, ``calc_lookup``; both cached by ``train_teacher``).
2. A weak student per environment: the BC warm start of ``bench/agents_horizon.py`` (a
   ``student``-size Llama, behaviour cloning on expert episodes at lr 2e-3, 20 warm-up steps,
   cosine; the recipe adds weight decay 0.01), built once and cached by the same recipe
   machinery (``train_teacher`` of a student-size, BC-only ``TeacherRecipe``, so it lives in
   the cache as ``agent-teacher-ENV-KEY``; ~1 min for gridnav, ~3 min for calc_lookup on the
   first run). gridnav uses the horizon bench's 400 steps (greedy held-out success 0.50 / 0.55
   at h=3 / 4). calc_lookup needs more before it copies names (``student_steps``; greedy
   success at h=3 / 4): 400 steps 0.03 / 0.00 (every error at turn 0), 900 0.13 / 0.10, 1200
   0.25 / 0.10 (used: errors at turns 0..3), 1500 1.00 / 1.00 (too few errors when sampled).
3. The student plays held-out episodes (the ``eval`` split) at each horizon, sampled at the
   rollout temperature (1.0: the regime in which the ``agent_score`` sampler calls a locator).
4. Labels: the ``expert`` locator's first wrong student turn per episode (exact, from
   ``env.is_optimal``: invalid calls, bumps, wasted calls; any optimal tie is right). Episodes
   without an error are the negatives.
5. Every locator runs through its public interface (``build_locator(name, options).locate``):

   ====================  ===========================================================================
   ``expert``            the labels themselves (a sanity row: 1.0 by construction)
   ``teacher_logprob``   the configuration SCoRe uses in ``bench/agents_horizon.py`` (``reduce = min``,
                         ``threshold = -2.0``: fixed before looking at these labels); plus an offline
                         sweep of ``threshold`` for both ``reduce`` values over ONE teacher scoring pass
                         (the sweep's best row is picked on these labels: optimistic)
   ``teacher_rollouts``  its defaults (``n = 2`` continuations per prefix, ``margin = 0.5``, the
                         rollout temperature)
   ``llm_judge``         only with ``--judge-url`` (an OpenAI-compatible ``/v1/chat/completions``); the
                         agents tests' judge is a scripted stand-in, so without an endpoint the row is
                         reported as not measured
   ====================  ===========================================================================

Metrics (per environment and over all episodes; ``k`` the expert's first error, ``k^`` the
locator's, None = no error):

* ``exact``: fraction of ALL episodes with ``k^ == k`` (None == None counts);
* ``within_one``: ALL episodes with both None, or both set and ``|k^ - k| <= 1``;
* on the episodes WITH an error: ``exact_on_errors``, ``within_one_on_errors``, ``early`` (k^ < k),
  ``late`` (k^ > k), ``missed`` (k^ None); exact + early + late + missed = 1;
* detection of "the episode has an error": ``precision``, ``recall``, ``false_alarm`` (flagged
  clean episodes / clean episodes);
* cost: teacher calls in the ``agents_horizon`` convention (one per generated teacher action,
  one per teacher scoring pass of one episode, one per judge request; the locators' own
  ``deps.stats`` counters), per episode, and seconds.

Outputs: a table whose last line is the headline; ``runs/bench/agents_locators.json`` (with
every episode's actions and located turns under ``episode_details``) and
``runs/bench/agents_locators.png`` (accuracy per locator per environment; first-error histograms).
The metrics and the threshold sweep are in ``bench/agents_locators_metrics.py``, the table, headline
and plot in ``bench/agents_locators_report.py``; this script builds the models and runs the locators.

Measured (this machine, 2 shared cores, 1 thread, students and teachers cached; 244-246 s, of which
``teacher_rollouts`` 228 s), 48 episodes per environment and horizon (h = 3, 4)::

    env          locator                     exact   +-1 | on errors: exact +-1  early late miss | prec recall f.a.
    gridnav      teacher_logprob min<-2.0     0.64  0.78 |            0.61  0.79  0.23  0.15 0.01 | 0.95  0.99  0.25
    gridnav      teacher_rollouts n=2 m=0.5   0.45  0.60 |            0.39  0.57  0.11  0.44 0.06 | 0.95  0.94  0.25
    calc_lookup  teacher_logprob min<-2.0     0.92  0.97 |            0.91  0.97  0.09  0.00 0.00 | 1.00  1.00  0.00
    calc_lookup  teacher_rollouts n=2 m=0.5   0.85  0.95 |            0.86  0.96  0.12  0.02 0.00 | 0.99  1.00  0.33
    all          teacher_logprob min<-2.0     0.78  0.88 |            0.77  0.88  0.15  0.07 0.01 | 0.98  0.99  0.21
    all          teacher_rollouts n=2 m=0.5   0.65  0.78 |            0.64  0.78  0.12  0.21 0.03 | 0.97  0.97  0.26
    (192 episodes, 173 with an error: gridnav 80 of 96, calc_lookup 93 of 96; cost per episode:
    teacher_logprob 1 scoring pass, teacher_rollouts 65 generated teacher actions)

What the disagreements are: in gridnav, teacher_logprob's early flags are optimal moves the
teacher would not take (another shortest path: 20 of its 22 flags before the expert's error
are moves other than the expert's own), and teacher_rollouts is late on 44% of the error
episodes: a detour or a bump leaves the teacher enough turns (2h + 4) to recover, so its
success does not drop until later; its n = 2 sampled continuations also flag 25% of clean
episodes. In calc_lookup every early flag of teacher_logprob (8 of 8) is a lucky guess: a
lookup of a chain member whose name the agent has not been shown yet, which ``is_optimal``
(effect-based: the optimal remaining cost drops by one) counts as right and both teacher
locators call wrong. The clean episodes are few (gridnav 16, calc_lookup 3), so the
false-alarm rates are rough. The threshold sweep moves teacher_logprob's exact accuracy
between 0.61 and 0.79 (reduce = min) and 0.10 and 0.78 (reduce = mean, best only at -0.25:
a mean over a tool call's ~12 mostly-format tokens hides the one wrong token).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# bench/ on the path for agents_horizon, which puts the repository root there in turn.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from agents_horizon import METHODS as HORIZON_METHODS
from agents_horizon import REDUCED as HORIZON_WARM
from agents_locators_metrics import JUDGE_NOT_MEASURED  # noqa: F401  (part of this script's interface: the smoke test reads it)
from agents_locators_metrics import histogram, locator_rows, threshold_sweep
from agents_locators_report import headline, plot, table_lines

from opdplug.cli import quiet_transformers

SCORE_LOCATOR_OPTIONS: dict = dict(HORIZON_METHODS["SCoRe"]["rollout"]["options"]["locator_options"])
"""The ``teacher_logprob`` options SCoRe trains with in ``bench/agents_horizon.py``."""


@dataclass(frozen=True)
class LocatorBenchConfig:
    """Sizes of the bench."""

    envs: tuple = ("gridnav", "calc_lookup")
    """Environments (each needs a built-in teacher recipe)."""
    horizons: tuple = (3, 4)
    """Horizons of the student's held-out episodes."""
    n: int = 48
    """Held-out student episodes per environment and horizon."""
    temperature: float = 1.0
    """The student's rollout temperature (and that of ``teacher_rollouts``' continuations)."""
    student_steps: dict = field(default_factory=lambda: {"gridnav": HORIZON_WARM.warm_steps, "calc_lookup": 1200})
    """BC warm-start steps of each weak student (gridnav: ``agents_horizon``'s reduced warm start)."""
    student_lr: float = HORIZON_WARM.warm_lr
    """Warm-start learning rate (``agents_horizon``'s)."""
    student_eval_n: int = 20
    """Greedy held-out check written beside the student (``teacher_eval.json``)."""
    logprob: dict = field(default_factory=lambda: dict(SCORE_LOCATOR_OPTIONS))
    """``teacher_logprob`` options of the reported row."""
    rollouts: dict = field(default_factory=lambda: {"n": 2, "margin": 0.5})
    """``teacher_rollouts`` options of the reported row (the locator's defaults)."""
    sweep_thresholds: tuple = (-0.25, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, -8.0)
    """``teacher_logprob`` thresholds of the offline sweep (for both ``reduce`` values)."""
    chunk: int = 0
    """Episodes per locator call (0: a whole environment-horizon group at once). Smaller chunks
    give a finer progress bar but cost ``teacher_rollouts`` about 2x (its continuations are
    batched per call: fewer rows per sampling round, as many rounds)."""
    seed: int = 0
    threads: int = 1


FULL = LocatorBenchConfig()
QUICK = dataclasses.replace(FULL, horizons=(1, 2), n=4, student_steps={"gridnav": 2, "calc_lookup": 2},
                            student_eval_n=2, sweep_thresholds=(-1.0, -2.0), chunk=4)


def student_recipe(cfg: LocatorBenchConfig, env: str, quick: bool):
    """The weak student's recipe: the environment's teacher recipe at student size, BC only
    (``agents_horizon``'s warm start: expert episodes, lr 2e-3, 20 warm-up steps, cosine)."""
    from opdplug_agents import recipe as recipes

    base = (recipes.QUICK if quick else recipes.RECIPES)[env]
    return dataclasses.replace(
        base, size="tiny" if quick else "student", init_seed=2, bc_steps=cfg.student_steps[env],
        bc_lr=cfg.student_lr, warmup_steps=0 if quick else min(20, cfg.student_steps[env] - 1), dagger_steps=0,
        eval_horizons=tuple(cfg.horizons), eval_n=cfg.student_eval_n, eval_phase1=False,
    )


# ----------------------------------------------------------------------------- the run
def locate_all(name: str, locator, groups: dict, deps_for, bar, chunk: int) -> tuple[dict, Counter, float]:
    """Run ``locator`` over every group's episodes in chunks: per group the located turns, the
    summed ``deps.stats`` and the seconds taken."""
    stats, out, seconds = Counter(), {}, 0.0
    for key, episodes in groups.items():
        bar.set_postfix_str(f"{name} h={key[1]}")
        found = []
        size = chunk if chunk > 0 else max(len(episodes), 1)
        for start in range(0, len(episodes), size):
            part = episodes[start:start + size]
            deps = deps_for(key, start)
            t0 = time.perf_counter()
            found += locator.locate(part, deps)
            seconds += time.perf_counter() - t0
            stats.update(deps.stats)
            if deps.notes:
                stats["notes"] = stats.get("notes", 0) + len(deps.notes)
            bar.update(len(part))
        out[key] = found
    return out, stats, seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds: plumbing only, numbers meaningless")
    parser.add_argument("--n", type=int, help="held-out episodes per environment and horizon")
    parser.add_argument("--judge-url", help="an OpenAI-compatible /v1/chat/completions URL: adds the llm_judge row")
    parser.add_argument("--judge-model", default="default", help="the judge request's model field")
    parser.add_argument("--output-dir", default="runs/bench", help="where agents_locators.{json,png} go")
    args = parser.parse_args(argv)

    cfg = QUICK if args.quick else FULL
    if args.n:
        cfg = dataclasses.replace(cfg, n=args.n)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    quiet_transformers()
    try:
        return _run(cfg, args)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: LocatorBenchConfig, args) -> dict:
    from opdplug_agents import recipe as recipes
    from opdplug_agents.locators import (
        JudgeUnreachable,
        LocatorDeps,
        build_locator,
        teacher_action_logprobs,
    )
    from opdplug_agents.rollout import ModelActor, run_episodes
    from opdplug_agents.task import AgentTask
    from tqdm.auto import tqdm

    from opdplug_local import models as local
    from opdplug.context import derive_seed

    t0 = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    book = recipes.QUICK if args.quick else recipes.RECIPES

    runs = [("expert", {}), ("teacher_logprob", dict(cfg.logprob)), ("teacher_rollouts", dict(cfg.rollouts))]
    if args.judge_url:
        runs.append(("llm_judge", {"url": args.judge_url, "model": args.judge_model}))
    locators = {name: build_locator(name, options) for name, options in runs}

    results: dict = {"config": dataclasses.asdict(cfg), "quick": bool(args.quick), "teachers": {}, "students": {},
                     "episodes": {}, "episode_details": {}, "locators": {}, "sweep": {},
                     "teacher_calls_convention": "one teacher generation of one action, one teacher scoring pass "
                                                 "of one episode, or one judge request (the locators' deps.stats)"}
    preds: dict = {name: {} for name in locators}  # name -> (env, h) -> located turns
    labels: dict = {}
    stats: dict = {name: Counter() for name in locators}
    env_stats: dict = {name: {} for name in locators}
    seconds: dict = {name: 0.0 for name in locators}
    failed: dict = {}  # locator name -> why it has no row (an unreachable judge)
    sweep_lps: dict = {}  # (env, h) -> per episode, per turn, teacher token log-probs
    all_groups: dict = {}  # (env, h) -> the student's episodes
    build_seconds = 0.0

    for env in cfg.envs:
        # (a) the teacher and the weak student
        t1 = time.perf_counter()
        teacher_dir = recipes.train_teacher(book[env])
        s_recipe = student_recipe(cfg, env, args.quick)
        student_dir = recipes.train_teacher(s_recipe, verbose=False)
        build_seconds += time.perf_counter() - t1
        measured = recipes.load_measured(student_dir)
        print(f"student ({env}): BC warm start, {s_recipe.size} size, {s_recipe.bc_steps} steps; greedy held-out "
              f"success " + ", ".join(f"h={h}: {s:.2f}" for h, s in measured.get("success", {}).items())
              + f"; cached at {student_dir}")
        results["teachers"][env] = {"dir": str(teacher_dir), "success": recipes.load_measured(teacher_dir).get("success")}
        results["students"][env] = {"dir": str(student_dir), "recipe": dataclasses.asdict(s_recipe),
                                    "greedy_success": measured.get("success")}
        tokenizer = local.load_tokenizer(str(teacher_dir))
        teacher = local.load_model(str(teacher_dir), "teacher")
        student = local.load_model(str(student_dir), "student")

        # (b) the student's held-out episodes
        groups, budgets = {}, {}
        for h in cfg.horizons:
            task = AgentTask(tokenizer, env=env, min_horizon=h, max_horizon=h, env_options=dict(book[env].env_options))
            prompts = task.prompts(cfg.n, seed=derive_seed(cfg.seed, "agents-locators", env, h), split="eval", length=h)
            budgets[h] = task.max_new_tokens(h)
            with torch.no_grad():
                groups[(env, h)] = run_episodes(
                    [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in prompts], ModelActor(student, "student"),
                    tokenizer, max_action_tokens=budgets[h], temperature=cfg.temperature,
                    generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "agents-locators-draws", env, h)),
                )

        def deps_for(key, start, teacher=teacher, tokenizer=tokenizer, budgets=budgets):
            return LocatorDeps(tokenizer=tokenizer, teacher=teacher, max_action_tokens=budgets[key[1]],
                               temperature=cfg.temperature,
                               generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "agents-locators-teacher", *key, start)))

        # (c) every locator over every group
        total = sum(len(e) for e in groups.values()) * len(locators)
        with tqdm(total=total, desc=f"locators on {env}", dynamic_ncols=True, leave=False) as bar:
            for name, locator in locators.items():
                if name in failed:
                    bar.update(sum(len(e) for e in groups.values()))
                    continue
                try:
                    found, used, secs = locate_all(name, locator, groups, deps_for, bar, cfg.chunk)
                except JudgeUnreachable as exc:  # report the row as not measured, keep the others
                    failed[name] = f"not measured: {exc}"
                    print(f"note: {failed[name]}")
                    continue
                preds[name].update(found)
                stats[name].update(used)
                env_stats[name][env] = {**used, "seconds": secs}
                seconds[name] += secs
        all_groups.update(groups)
        for key, episodes in groups.items():
            labels[key] = preds["expert"][key]
            sweep_lps[key] = teacher_action_logprobs(teacher, episodes, tokenizer)  # one pass, for the sweep
        results["episodes"][env] = {
            str(h): {"n": len(groups[(env, h)]), "success": sum(e.success for e in groups[(env, h)]) / len(groups[(env, h)]),
                     "failing": sum(not e.success for e in groups[(env, h)]),
                     "with_error": sum(k is not None for k in labels[(env, h)]),
                     "mean_turns": sum(e.num_turns for e in groups[(env, h)]) / len(groups[(env, h)]),
                     "first_error_histogram": histogram(labels[(env, h)]),
                     "located_histograms": {name: histogram(preds[name][(env, h)]) for name in locators
                                            if name not in failed}}
            for h in cfg.horizons
        }
        results["episode_details"][env] = {str(h): [
            {"seed": e.seed, "success": e.success, "turns": e.num_turns, "actions": [t.action_text for t in e.turns],
             **{name: preds[name][(env, h)][i] for name in locators if name not in failed}}
            for i, e in enumerate(groups[(env, h)])] for h in cfg.horizons}

    # (d) metrics
    results["locators"] = locator_rows(cfg, runs, failed, preds, labels, stats, env_stats, seconds)

    # (e) the teacher_logprob threshold sweep (offline: the scorer replays one scoring pass)
    results["sweep"] = threshold_sweep(cfg, all_groups, sweep_lps, labels)
    main_row = next(r for r in results["sweep"]["all"]
                    if r["reduce"] == cfg.logprob.get("reduce", "mean") and r["threshold"] == cfg.logprob.get("threshold", -1.0))
    results["sweep_matches_reported_row"] = main_row["exact"] == results["locators"]["teacher_logprob"]["all"]["exact"]

    # (f) table, headline, files
    results["sweep_best"] = max(results["sweep"]["all"], key=lambda r: r["exact"])
    lines = table_lines(results, cfg)
    results["wall_seconds"] = time.perf_counter() - t0
    results["build_seconds"] = build_seconds
    results["headline"], last = headline(results, cfg)
    lines.append("")
    lines.append(last)
    print()
    print("\n".join(lines))
    (out / "agents_locators.json").write_text(json.dumps(results, indent=1, default=list))
    plot(results, out / "agents_locators.png")
    return results


if __name__ == "__main__":
    main()
