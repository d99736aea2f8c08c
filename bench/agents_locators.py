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

from opdplug.cli import quiet_transformers

SCORE_LOCATOR_OPTIONS: dict = dict(HORIZON_METHODS["SCoRe"]["rollout"]["options"]["locator_options"])
"""The ``teacher_logprob`` options SCoRe trains with in ``bench/agents_horizon.py``."""
JUDGE_NOT_MEASURED = "not measured (needs an OpenAI-compatible endpoint; pass --judge-url URL)"


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


# ----------------------------------------------------------------------------- metrics
def score(pred: list, labels: list) -> dict:
    """Accuracy of located first errors ``pred`` against the expert's ``labels`` (module docstring)."""
    n = len(labels)
    err = [i for i, k in enumerate(labels) if k is not None]
    clean = [i for i, k in enumerate(labels) if k is None]
    flagged = [i for i, p in enumerate(pred) if p is not None]

    def frac(num, den):
        return num / den if den else None

    def near(p, k):
        return (p is None and k is None) or (p is not None and k is not None and abs(p - k) <= 1)

    tp = sum(labels[i] is not None for i in flagged)
    return {
        "n": n, "n_error": len(err), "n_clean": len(clean), "n_flagged": len(flagged),
        "exact": frac(sum(p == k for p, k in zip(pred, labels)), n),
        "within_one": frac(sum(near(p, k) for p, k in zip(pred, labels)), n),
        "exact_on_errors": frac(sum(pred[i] == labels[i] for i in err), len(err)),
        "within_one_on_errors": frac(sum(pred[i] is not None and abs(pred[i] - labels[i]) <= 1 for i in err), len(err)),
        "early": frac(sum(pred[i] is not None and pred[i] < labels[i] for i in err), len(err)),
        "late": frac(sum(pred[i] is not None and pred[i] > labels[i] for i in err), len(err)),
        "missed": frac(sum(pred[i] is None for i in err), len(err)),
        "false_alarm": frac(sum(pred[i] is not None for i in clean), len(clean)),
        "precision": frac(tp, len(flagged)),
        "recall": frac(tp, len(err)),
    }


def histogram(first_errors) -> dict:
    """``{"0": k0, "1": k1, ..., "none": k}`` of first-error turn indices."""
    counts = Counter(first_errors)
    out = {str(t): counts[t] for t in sorted(t for t in counts if t is not None)}
    out["none"] = counts.get(None, 0)
    return out


def short_label(name: str, options: dict) -> str:
    """A locator's name with its options, short enough for the table."""
    if name == "teacher_logprob" and options:
        return f"teacher_logprob {options.get('reduce', 'mean')}<{options.get('threshold', -1.0)}"
    if name == "teacher_rollouts" and options:
        return f"teacher_rollouts n={options.get('n', 2)} m={options.get('margin', 0.5)}"
    if name == "llm_judge" and options:
        return f"llm_judge {options.get('model', 'default')}"
    return name


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:5.2f}"


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


def plot(results: dict, path: Path) -> None:
    """Accuracy per locator per environment (left); the expert's first-error histograms (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(results["config"]["envs"])
    rows = [(name, info) for name, info in results["locators"].items() if info.get("measured")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(rows), 1)
    cols = envs + ["all"]
    for i, (name, info) in enumerate(rows):
        exact = [info["by_env"][e]["exact"] if e != "all" else info["all"]["exact"] for e in cols]
        near = [info["by_env"][e]["within_one"] if e != "all" else info["all"]["within_one"] for e in cols]
        xs = [c + (i - (len(rows) - 1) / 2) * width for c in range(len(cols))]
        bars = ax.bar(xs, exact, width * 0.95, label=f"{name} exact")
        ax.bar(xs, [b - a for a, b in zip(exact, near)], width * 0.95, bottom=exact, color=bars[0].get_facecolor(),
               alpha=0.35, hatch="//", label=f"{name} within one step")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols)
    ax.set_ylim(0, 1.35)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy vs the expert's first error (all episodes)")
    ax.set_title("earliest-error locators (solid: exact step; hatched: within one step)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    hists = [(f"{e} h={h}", results["episodes"][e][str(h)]["first_error_histogram"])
             for e in envs for h in results["config"]["horizons"]]
    bins = sorted({k for _, hist in hists for k in hist if k != "none"}, key=int) + ["none"]
    width = 0.8 / max(len(hists), 1)
    for i, (label, hist) in enumerate(hists):
        xs = [b + (i - (len(hists) - 1) / 2) * width for b in range(len(bins))]
        bx.bar(xs, [hist.get(k, 0) for k in bins], width * 0.95, label=label)
    bx.set_xticks(range(len(bins)))
    bx.set_xticklabels(bins)
    bx.set_xlabel("the expert's first wrong student turn (none: no error)")
    bx.set_ylabel("episodes")
    bx.set_title("where first errors fall (weak BC student, sampled)", fontsize=10)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    keys = [(env, h) for env in cfg.envs for h in cfg.horizons]

    def gather(table, which):
        return [k for key in keys if which(key) for k in table[key]]

    for name, options in runs:
        if name in failed:
            results["locators"][name] = {"options": options, "measured": False, "note": failed[name]}
            continue
        cost = dict(stats[name])
        calls = cost.get("teacher_actions", 0) + cost.get("teacher_scorings", 0) + cost.get("judge_calls", 0)
        n_all = len(gather(labels, lambda k: True))
        results["locators"][name] = {
            "options": options, "measured": True,
            "by_env": {env: score(gather(preds[name], lambda k, e=env: k[0] == e), gather(labels, lambda k, e=env: k[0] == e))
                       for env in cfg.envs},
            "by_env_horizon": {f"{env} h={h}": score(preds[name][(env, h)], labels[(env, h)]) for env, h in keys},
            "all": score(gather(preds[name], lambda k: True), gather(labels, lambda k: True)),
            "cost": {**cost, "teacher_calls": calls, "teacher_calls_per_episode": calls / n_all, "seconds": seconds[name]},
            "cost_by_env": env_stats[name],
        }
    if "llm_judge" not in results["locators"]:
        results["locators"]["llm_judge"] = {"options": {}, "measured": False, "note": JUDGE_NOT_MEASURED}

    # (e) the teacher_logprob threshold sweep (offline: the scorer replays one scoring pass)
    for reduce in ("min", "mean"):
        for threshold in cfg.sweep_thresholds:
            locator = build_locator("teacher_logprob", {**cfg.logprob, "reduce": reduce, "threshold": threshold})
            got = {}
            for key, episodes in all_groups.items():
                table = {id(e): lp for e, lp in zip(episodes, sweep_lps[key])}
                deps = LocatorDeps(tokenizer=None, scorer=lambda eps, table=table: [table[id(e)] for e in eps])
                got[key] = locator.locate(episodes, deps)
            for scope in [*cfg.envs, "all"]:
                sel = (lambda k: True) if scope == "all" else (lambda k, s=scope: k[0] == s)
                row = {"reduce": reduce, "threshold": threshold,
                       **score(gather(got, sel), gather(labels, sel))}
                results["sweep"].setdefault(scope, []).append(row)
    main_row = next(r for r in results["sweep"]["all"]
                    if r["reduce"] == cfg.logprob.get("reduce", "mean") and r["threshold"] == cfg.logprob.get("threshold", -1.0))
    results["sweep_matches_reported_row"] = main_row["exact"] == results["locators"]["teacher_logprob"]["all"]["exact"]

    # (f) table, headline, files
    lines = []
    lines.append(f"held-out student episodes (sampled at T={cfg.temperature}), labels = the expert locator's first error:")
    for env in cfg.envs:
        for h in cfg.horizons:
            ep = results["episodes"][env][str(h)]
            hist = " ".join(f"{k}:{v}" for k, v in ep["first_error_histogram"].items())
            lines.append(f"  {env:<12} h={h}  n={ep['n']:<4} success {ep['success']:.2f}  failing {ep['failing']:<3} "
                         f"with an error {ep['with_error']:<3} mean turns {ep['mean_turns']:.1f}   first error at turn: {hist}")
    lines.append("")
    head = (f"{'env':<12} {'locator':<27} {'exact':>5} {'+-1':>5} | on error episodes: {'exact':>5} {'+-1':>5} "
            f"{'early':>5} {'late':>5} {'miss':>5} | {'prec':>5} {'recall':>6} {'f.a.':>5} | {'calls/ep':>8} {'sec':>6}")
    lines.append(head)
    lines.append("-" * len(head))
    for scope in [*cfg.envs, "all"]:
        for name, info in results["locators"].items():
            label = short_label(name, info["options"])
            if not info["measured"]:
                lines.append(f"{scope:<12} {label:<27} {info['note']}")
                continue
            m = info["all"] if scope == "all" else info["by_env"][scope]
            cost = info["cost"]
            if scope != "all":
                used = info["cost_by_env"][scope]
                calls = used.get("teacher_actions", 0) + used.get("teacher_scorings", 0) + used.get("judge_calls", 0)
                cost = {"teacher_calls_per_episode": calls / m["n"], "seconds": used["seconds"]}
            cost_text = f"{cost['teacher_calls_per_episode']:>8.1f} {cost['seconds']:>6.1f}"
            lines.append(f"{scope:<12} {label:<27} {_fmt(m['exact'])} {_fmt(m['within_one'])} |                    "
                         f"{_fmt(m['exact_on_errors'])} {_fmt(m['within_one_on_errors'])} {_fmt(m['early'])} "
                         f"{_fmt(m['late'])} {_fmt(m['missed'])} | {_fmt(m['precision'])} {_fmt(m['recall']):>6} "
                         f"{_fmt(m['false_alarm'])} | {cost_text}")
        lines.append("")
    lines.append("teacher_logprob threshold sweep (offline, one scoring pass; exact / +-1 / recall / false alarm, all episodes):")
    lines.append(f"  {'threshold':>9}   " + "   ".join(f"{'reduce=' + r:^23}" for r in ("min", "mean")))
    for threshold in cfg.sweep_thresholds:
        cells = []
        for reduce in ("min", "mean"):
            r = next(r for r in results["sweep"]["all"] if r["reduce"] == reduce and r["threshold"] == threshold)
            cells.append(f"{_fmt(r['exact'])} {_fmt(r['within_one'])} {_fmt(r['recall'])} {_fmt(r['false_alarm'])}")
        mark = "  <- reported row" if threshold == cfg.logprob.get("threshold") else ""
        lines.append(f"  {threshold:>9.2f}   " + "   ".join(cells) + mark)
    best = max(results["sweep"]["all"], key=lambda r: r["exact"])
    results["sweep_best"] = best
    lines.append(f"  best on these labels (optimistic, picked after the fact): reduce={best['reduce']} "
                 f"threshold={best['threshold']}: exact {best['exact']:.2f}, within one {best['within_one']:.2f}")
    results["wall_seconds"] = time.perf_counter() - t0
    results["build_seconds"] = build_seconds
    lp, tr = results["locators"]["teacher_logprob"], results["locators"]["teacher_rollouts"]
    n_all, n_err = lp["all"]["n"], lp["all"]["n_error"]
    judge = results["locators"]["llm_judge"]
    judge_text = (f"llm_judge {judge['all']['exact']:.2f}" if judge["measured"] else "llm_judge not measured (no endpoint)")
    results["headline"] = {"teacher_logprob_exact": lp["all"]["exact"], "teacher_rollouts_exact": tr["all"]["exact"],
                           "teacher_logprob_within_one": lp["all"]["within_one"],
                           "teacher_rollouts_within_one": tr["all"]["within_one"],
                           "llm_judge_exact": judge["all"]["exact"] if judge["measured"] else None,
                           "episodes": n_all, "with_error": n_err}
    headline = (f"headline: teacher_logprob exact-step accuracy {lp['all']['exact']:.2f} (within one step "
                f"{lp['all']['within_one']:.2f}), teacher_rollouts {tr['all']['exact']:.2f} ({tr['all']['within_one']:.2f}), "
                f"{judge_text}, vs expert labels over {n_all} episodes ({n_err} with an error; "
                f"{'+'.join(cfg.envs)}, h={','.join(map(str, cfg.horizons))})  [{results['wall_seconds']:.0f} s]")
    lines.append("")
    lines.append(headline)
    print()
    print("\n".join(lines))
    (out / "agents_locators.json").write_text(json.dumps(results, indent=1, default=list))
    plot(results, out / "agents_locators.png")
    return results


if __name__ == "__main__":
    main()
