"""Rollout throughput on an interpreter-backed environment, before and after instance reuse.

    .venv/bin/python bench/agents_env_reuse.py            # ~1 minute
    .venv/bin/python bench/agents_env_reuse.py --quick    # seconds; plumbing only

``pycalc`` is ``calc_lookup`` whose calculator runs in a Python interpreter of its own (a
subprocess started when the environment is built, stopped by ``close()``), the way
environments backed by an interpreter, a sandbox or a game engine pay a start-up cost. It is
registered by a plugin object of this script through ``opd_register_environments``.

The environment's expert plays the same episodes (so nothing but the environment costs time)
through ``run_episodes`` in batches, with

* ``fresh``: ``EnvPool(reuse=False)``: a new instance per episode, closed after (before);
* ``reuse``: ``EnvPool()``: instances kept between batches and reset (after; the default).

Prints episodes per second and instances built per mode; writes
``runs/bench/agents_env_reuse.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from opdplug.hookspecs import hookimpl
from opdplug.manager import make_plugin_manager
from opdplug_agents.actors import ExpertActor
from opdplug_agents.envpool import EnvPool
from opdplug_agents.envs import CalcLookupEnv
from opdplug_agents.envs.calc_lookup import TEXT
from opdplug_agents.envs.base import Outcome, num
from opdplug_agents.rollout import run_episodes
from opdplug_agents.task import AgentTask

LOOP = "import sys\nfor line in sys.stdin:\n    print(eval(line, {'__builtins__': {}}), flush=True)\n"
"""The interpreter's loop: one expression per line in, its value out."""


class PyCalcEnv(CalcLookupEnv):
    """``calc_lookup`` with its calculator in a Python subprocess (started here, closed by close)."""

    name = "pycalc"
    gym_id = ""

    def __init__(self, **options):
        super().__init__(**options)
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", LOOP], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def _tool_calc(self, expr: str) -> Outcome:
        outcome = super()._tool_calc(expr)  # validates the expression (the safe calculator)
        if not outcome.valid:
            return outcome
        self.proc.stdin.write(expr.replace("\n", " ") + "\n")
        self.proc.stdin.flush()
        value = int(self.proc.stdout.readline())
        return Outcome(TEXT["result"].format(value=num(value)))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        super().close()


class BenchPlugin:
    @hookimpl
    def opd_register_environments(self, register):
        register("pycalc", PyCalcEnv)


def measure(registry, tokenizer, pool: EnvPool, specs, batch: int) -> dict:
    start = time.perf_counter()
    episodes = []
    for i in range(0, len(specs), batch):
        episodes += run_episodes(specs[i:i + batch], ExpertActor(), tokenizer, max_action_tokens=64,
                                 temperature=0.0, generator=None, registry=registry, pool=pool)
    seconds = time.perf_counter() - start
    pool.close()
    assert all(e.success for e in episodes)
    return {"episodes": len(episodes), "seconds": seconds, "episodes_per_s": len(episodes) / seconds,
            "steps": sum(e.num_turns for e in episodes), "instances_built": pool.built}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.batch = 16, 8
    registry = make_plugin_manager([BenchPlugin()]).registry
    task = AgentTask(None, env="pycalc", min_horizon=args.horizon, max_horizon=args.horizon, registry=registry)
    specs = [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in task.prompts(args.episodes, seed=0)]
    task.close()
    results = {}
    for mode, pool in (("fresh", EnvPool(reuse=False)), ("reuse", EnvPool())):
        results[mode] = measure(registry, task.tokenizer, pool, specs, args.batch)
        r = results[mode]
        print(f"{mode:6s} {r['episodes_per_s']:8.1f} episodes/s  {r['steps'] / r['seconds']:8.1f} steps/s  "
              f"{r['instances_built']} instances built ({r['seconds']:.2f} s)", flush=True)
    speedup = results["reuse"]["episodes_per_s"] / results["fresh"]["episodes_per_s"]
    print(f"reuse / fresh throughput: {speedup:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agents_env_reuse.json").write_text(json.dumps(
        {"env": "pycalc", "horizon": args.horizon, "batch": args.batch, "results": results, "speedup": speedup}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(results), [r["episodes_per_s"] for r in results.values()], color=["grey", "tab:blue"])
    ax.set_ylabel("episodes / s (expert acting)")
    ax.set_title(f"pycalc h={args.horizon}, batch {args.batch}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "agents_env_reuse.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
