"""Environment instances are reused between batches and closed; bench/agents_env_reuse.py
--quick measures fresh against reused instances on an interpreter-backed environment."""
from __future__ import annotations

import json

from bench_loader import load_bench
from opdplug_agents.actors import ExpertActor
from opdplug_agents.envpool import EnvPool
from opdplug_agents.rollout import run_episodes
from opdplug_agents.task import AgentTask


class Counting(EnvPool):
    """Counts closes, to see that every instance is closed exactly once."""

    def __init__(self, reuse):
        super().__init__(reuse=reuse)
        self.closed = 0

    def release(self, env, name, options, registry=None):
        if not self.reuse:
            self.closed += 1
        super().release(env, name, options, registry)


def _specs(n):
    task = AgentTask(None, env="gridnav", min_horizon=2, max_horizon=2)
    return task.tokenizer, [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in task.prompts(n, seed=0)]


def test_reused_instances_play_the_same_episodes_as_fresh_ones():
    tok, specs = _specs(6)
    fresh, reuse = Counting(reuse=False), EnvPool()
    a = [e for i in range(0, 6, 3) for e in run_episodes(specs[i:i + 3], ExpertActor(), tok, max_action_tokens=32,
                                                           temperature=0.0, generator=None, pool=fresh)]
    b = [e for i in range(0, 6, 3) for e in run_episodes(specs[i:i + 3], ExpertActor(), tok, max_action_tokens=32,
                                                           temperature=0.0, generator=None, pool=reuse)]
    assert [e.token_ids for e in a] == [e.token_ids for e in b] and all(e.success for e in b)
    assert fresh.built == fresh.closed == 6 and reuse.built == 3  # the second batch reset the first's instances
    reuse.close()
    assert reuse._idle == {}


def test_an_actor_that_raises_still_gives_the_instances_back():
    tok, specs = _specs(2)
    pool = EnvPool()

    def broken(env, turn):
        raise RuntimeError("policy bug")

    from opdplug_agents.actors import PolicyActor

    try:
        run_episodes(specs, PolicyActor(broken), tok, max_action_tokens=8, temperature=0.0, generator=None, pool=pool)
    except RuntimeError:
        pass
    assert sum(len(v) for v in pool._idle.values()) == 2
    pool.close()


def test_reuse_bench_quick(tmp_path, monkeypatch, capsys):
    bench = load_bench(monkeypatch, "agents_env_reuse.py")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "agents_env_reuse.json").read_text())
    assert data["results"]["fresh"]["instances_built"] == 16 and data["results"]["reuse"]["instances_built"] == 8
    assert (tmp_path / "agents_env_reuse.png").stat().st_size > 0
