"""SCoRe's variants: the student re-samples the key step on-policy (no teacher tokens copied,
no teacher generation), and the locator's calls are cached and budgeted."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from opdplug.types import PRODUCER_STUDENT
from opdplug_agents import accounting
from opdplug_agents.correction import AgentScore
from opdplug_agents.locators import LocatorDeps
from opdplug_agents.locators.budget import BudgetedLocator
from opdplug_agents.registries import installed_registry
from opdplug_agents.rollout import PolicyActor, run_episodes
from opdplug_agents.task import AgentTask
from opdplug_local import tiny


def _ctx(task, model):
    return SimpleNamespace(
        config=SimpleNamespace(rollout=SimpleNamespace(temperature=1.0, top_p=1.0, max_new_tokens=0)),
        task=task, tokenizer=task.tokenizer, teacher=model, student_module=lambda: model,
        generator=lambda *parts: torch.Generator().manual_seed(0), scratch={}, registry=installed_registry(),
    )


def test_on_policy_key_step_is_the_students_own_tokens():
    task = AgentTask(None, env="gridnav", min_horizon=2, max_horizon=2, max_turns=3)
    ctx = _ctx(task, tiny.build_model("tiny", task.tokenizer, seed=0))
    batch = AgentScore(locator="expert", key_step_actor="student", key_reward="optimal")(ctx, task.prompts(4, seed=0), 0)
    m = accounting.step_metrics(ctx)
    assert m["agent/repairs"] > 0 and batch.key_step_B_L.any()
    assert (batch.producer_B_L[batch.key_step_B_L] == PRODUCER_STUDENT).all()  # not the teacher's tokens
    assert m["agent/teacher_actions"] == 0 and m["agent/teacher_calls"] == 0  # until the loss scores the rows
    assert batch.batch_size == 4 + m["agent/short_rows"]


class Counting:
    def __init__(self):
        self.asked = 0

    def locate(self, episodes, deps, *, start=None):
        self.asked += len(episodes)
        return [0] * len(episodes)


def test_locator_answers_are_cached_and_budgeted():
    task = AgentTask(None, env="gridnav", min_horizon=2, max_horizon=2)
    specs = [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in task.prompts(4, seed=0)]
    episodes = run_episodes(specs, PolicyActor(lambda env, t: env.expert_action()), task.tokenizer,
                            max_action_tokens=32, temperature=0.0, generator=None)
    inner, cache, deps = Counting(), {}, LocatorDeps(tokenizer=task.tokenizer)
    budgeted = BudgetedLocator(inner, cache, max_episodes=3)
    assert budgeted.locate(episodes, deps) == [0, 0, 0, None] and inner.asked == 3
    assert deps.stats["locator_skipped"] == 1
    assert budgeted.locate(episodes, deps) == [0, 0, 0, 0] and inner.asked == 4  # three from the cache
    assert deps.stats["locator_cache_hits"] == 3
    budgeted.locate(episodes, deps, start=1)  # another question: not a cache hit
    assert inner.asked == 7
