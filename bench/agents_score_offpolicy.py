"""Why SCoRe loses, measured: how off-policy its key steps are for the student, and what the
corrected trajectories teach.

    .venv/bin/python bench/agents_score_offpolicy.py runs/bench/h_s0   # after bench/agents_horizon.py

Reads the horizon bench's output directory (its teacher and its BC warm start, the student
every method starts from), lets the student play ``--n`` training episodes at horizon ``--horizon``
(T = 1, as the samplers do), locates each first error with the exact ``expert`` locator, and
rewrites that key step twice, as ``agent_score`` does:

* ``teacher``: the teacher writes the key step (SCoRe as before: the student copies its tokens);
* ``student``: the student re-samples it (``key_step_actor = "student"``, on-policy).

Printed and written to ``DIR/agents_score_offpolicy.json``:

* the student's mean log-prob per token of its own actions, of the teacher's key steps and of
  its re-sampled key steps (how far from its own distribution each training target is);
* the share of key steps that are optimal moves (``is_optimal``) for each writer;
* success of the original episodes and of the corrected trajectories.
"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import torch

from opdplug_agents.actors import ModelActor
from opdplug_agents.correction import correct_episodes
from opdplug_agents.locators import LocatorDeps
from opdplug_agents.locators.teacher_logprob import teacher_action_logprobs
from opdplug_agents.registries import build_locator, episode_env
from opdplug_agents.rollout import run_episodes
from opdplug_agents.task import AgentTask
from opdplug_local import models as local


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", help="an output directory of bench/agents_horizon.py")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.bench_dir)
    results = json.loads((root / "agents_horizon.json").read_text())
    warm = root / "agents_horizon" / "warm_start"
    options = tomllib.loads((warm / "config.toml").read_text())["task"]["options"]
    tokenizer = local.load_tokenizer(str(warm / "final"))
    student = local.load_model(str(warm / "final"), "warm start")
    teacher = local.load_model(results["teacher_dir"], "teacher")
    task = AgentTask(tokenizer, env=options["env"], min_horizon=args.horizon, max_horizon=args.horizon,
                     env_options=options.get("env_options", {}))
    prompts = task.prompts(args.n, seed=args.seed)
    specs = [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in prompts]
    budget = task.max_new_tokens(args.horizon)
    gen = torch.Generator().manual_seed(args.seed)
    original = run_episodes(specs, ModelActor(student), task.codec, max_action_tokens=budget, temperature=1.0, generator=gen)
    locator = build_locator("expert", {})
    out = {"n": args.n, "horizon": args.horizon, "seed": args.seed, "env": options["env"],
           "success_original": _mean(e.success for e in original)}
    own_turns = [turn for ep in teacher_action_logprobs(student, original, task.codec) for turn in ep]
    out["student_logprob_own_actions"] = _mean(lp for turn in own_turns for lp in turn)
    out["student_action_logprob_own_actions"] = _mean(sum(turn) for turn in own_turns)
    for writer, actor in (("teacher", ModelActor(teacher, "teacher")), ("student", ModelActor(student))):
        correction = correct_episodes(
            specs, ModelActor(student), actor, locator, LocatorDeps(tokenizer=task.codec), task.codec,
            max_action_tokens=budget, temperature=1.0, max_repairs=1, original=original,
            repair_generator=torch.Generator().manual_seed(args.seed + 1),
        )
        rewritten = [(e, keys[0]) for e, keys in zip(correction.corrected, correction.key_turns) if keys]
        lps = teacher_action_logprobs(student, [e for e, _ in rewritten], task.codec)
        key_lps = [lp for (e, k), ep in zip(rewritten, lps) for lp in ep[k]]
        key_sums = [sum(ep[k]) for (e, k), ep in zip(rewritten, lps)]
        optimal = []
        for e, k in rewritten:
            env = episode_env(e)
            env.replay([t.action_text for t in e.turns[:k]])
            optimal.append(env.is_optimal(e.turns[k].action_text))
        out[writer] = {
            "key_steps": len(rewritten),
            "student_logprob_per_token": _mean(key_lps),
            "student_action_logprob": _mean(key_sums),
            "student_action_prob_below_0.1": _mean(x < -2.302585 for x in key_sums),
            "key_step_optimal": _mean(optimal),
            "success_corrected": _mean(e.success for e in correction.corrected),
        }
    (root / "agents_score_offpolicy.json").write_text(json.dumps(out, indent=2))
    print(f"{out['env']} h={args.horizon}, {args.n} training episodes, student = the BC warm start")
    print(f"student log-prob of its own actions: per token {out['student_logprob_own_actions']:.3f}, "
          f"per action {out['student_action_logprob_own_actions']:.3f}")
    for writer in ("teacher", "student"):
        r = out[writer]
        print(f"key steps by the {writer:7s}: {r['key_steps']:3d}, student log-prob per token {r['student_logprob_per_token']:.3f}, "
              f"per action {r['student_action_logprob']:.3f} (prob < 0.1: {r['student_action_prob_below_0.1']:.2f}), "
              f"optimal {r['key_step_optimal']:.2f}, success after correction {r['success_corrected']:.2f} "
              f"(before {out['success_original']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
