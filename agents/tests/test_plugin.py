"""The plugin loads through the real ``opdplug`` entry point and registers the environments, the
``agent`` task, its samplers and verifier; plain agent OPD trains end to end."""
from __future__ import annotations

import importlib.metadata
import math

import gymnasium
import pytest
import torch

from agent_stubs import Capture
from opdplug_local import tiny
from opdplug.errors import ConfigError
from opdplug.types import PRODUCER_STUDENT, PRODUCER_TEACHER
from opdplug_agents import textio
from opdplug_agents.rollout import ExpertActor, run_episodes
from opdplug_agents.task import AgentTask

TOOL_ENVS = {"calc_lookup", "gridnav", "swapsort"}
EXPECTED = {*TOOL_ENVS, "gymnasium"}  # the adapter needs a game id: tested in test_gymnasium_env.py


def test_entry_point_is_installed():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="opdplug")}
    assert "agents" in eps, "run: pip install -c constraints.txt -e agents"
    assert eps["agents"].value == "opdplug_agents.plugin"
    assert eps["agents"].dist.name == "opdplug-agents"


def test_manager_loads_the_plugin_and_its_environments(opd_manager):
    manager = opd_manager()
    info = manager.infos["agents"]
    assert not info.error and info.distribution == "opdplug-agents" and info.version == "0.1.0"
    assert {"opd_register_environments", "opd_register_samplers", "opd_register_tasks", "opd_register_verifiers",
            "opd_register_credit_schemes", "opd_score", "opd_step_end"} <= set(info.hooks)
    registry = manager.registry
    assert EXPECTED <= set(registry.names("environments"))
    assert set(info.provides["environments"]) == EXPECTED
    assert info.provides["tasks"] == ["agent"] and info.provides["verifiers"] == ["agent"]
    assert set(info.provides["samplers"]) == {"agent", "agent_teacher", "agent_expert", "agent_score", "agent_dagger"}
    assert set(info.provides["credit_schemes"]) == {"turn_level", "discounted_episode"}
    assert {registry.owners["environments"][name] for name in EXPECTED} == {"agents"}


@pytest.mark.parametrize("name", sorted(TOOL_ENVS))
def test_registry_builds_a_working_env_by_name(opd_manager, name):
    factory = opd_manager().registry.get("environments", name, "env")
    env = factory(horizon=2, split="eval")
    assert isinstance(env, gymnasium.Env)
    obs, info = env.reset(seed=4)
    assert info["split"] == "eval" and env.observation_space.contains(obs)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(env.expert_action())
    assert info["success"]
    # The same environment through gymnasium's registry.
    assert gymnasium.make(factory.gym_id, horizon=2).unwrapped.name == name


def test_unknown_environment_is_a_one_line_config_error(opd_manager):
    with pytest.raises(ConfigError) as info:
        opd_manager().registry.get("environments", "gridnva", "env")
    message = str(info.value)
    assert "\n" not in message and "gridnav" in message and "unknown environment" in message


def test_only_this_plugin_can_be_selected(opd_manager, monkeypatch):
    monkeypatch.setenv("OPDPLUG_PLUGINS", "agents")
    manager = opd_manager()
    assert set(manager.infos) == {"opdplug", "agents"}
    owners = manager.registry.owners["environments"]
    assert {name for name, owner in owners.items() if owner == "agents"} == EXPECTED


# ----------------------------------------------------------------------------- agent task
@pytest.fixture(scope="module")
def agent_tok():
    return tiny.build_tokenizer(AgentTask.words())


@pytest.fixture(scope="module")
def agent_teacher_dir(tmp_path_factory, agent_tok):
    """A tiny (untrained) teacher speaking the agent tokenizer, saved like a real one."""
    path = tmp_path_factory.mktemp("agent_teacher")
    tiny.save_pretrained_pair(tiny.build_model("tiny", agent_tok, seed=1), agent_tok, path)
    return path


def test_agent_task_through_the_core_builder(opd_manager, agent_tok):
    from opdplug.loop import build_task

    registry = opd_manager().registry
    task = build_task(registry, "agent", {"env": "swapsort", "min_horizon": 2, "max_horizon": 3, "env_options": {"length": 5}}, agent_tok)
    assert isinstance(task, AgentTask) and set(task.env_words()) <= set(AgentTask.words())
    for bad in ({"env": "swapsrt"}, {"env": "gridnav", "env_options": {"horizon": 3}},
                {"env": "gridnav", "min_horizon": 3, "max_horizon": 2}, {"env": "gridnav", "env_options": {"sise": 3}}):
        with pytest.raises(ConfigError) as info:
            build_task(registry, "agent", bad, agent_tok)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(TOOL_ENVS))
def test_agent_task_prompts_and_verify(agent_tok, name):
    task = AgentTask(agent_tok, env=name, min_horizon=2, max_horizon=4)
    a = task.prompts(6, seed=3, split="train")
    assert [p.prompt_ids for p in a] == [p.prompt_ids for p in task.prompts(6, seed=3, split="train")]
    assert [p.meta for p in a] == [p.meta for p in task.prompts(6, seed=3, split="train")]
    assert [p.prompt_ids for p in a] != [p.prompt_ids for p in task.prompts(6, seed=4, split="train")]
    ev = task.prompts(6, seed=3, split="eval", length=2)
    assert {p.meta["length"] for p in ev} == {2} and {p.meta["options"]["split"] for p in ev} == {"eval"}
    assert {p.meta["length"] for p in a} <= {2, 3, 4} and {p.meta["options"]["split"] for p in a} == {"train"}
    for p in a + ev:
        assert p.meta["env"] == name and p.meta["options"]["horizon"] == p.meta["length"]
        assert p.prompt_ids[0] == agent_tok.bos_token_id and p.prompt_ids[-1] == textio.marker_id(agent_tok)
    # Expert episodes of these very prompts: their completions verify, in both layouts.
    episodes = run_episodes([(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in a], ExpertActor(), agent_tok,
                            max_action_tokens=task.max_new_tokens(4), temperature=1.0, generator=None)
    for p, e in zip(a, episodes):
        assert e.prompt_ids == p.prompt_ids and e.success
        assert max(len(t.action_ids) for t in e.turns) <= task.max_new_tokens(p.meta["length"])
        completion = list(e.token_ids[len(p.prompt_ids):])
        assert task.verify(p, completion) == 1.0
        assert task.verify(p, [i for t in e.turns for i in t.action_ids]) == 1.0  # actions only
        assert task.verify(p, completion[: len(e.turns[0].action_ids)]) == 0.0  # one step is not enough
        assert task.verify(p, [agent_tok.eos_token_id, 999999]) == 0.0  # garbage never raises




def agent_config(manager, tmp_path, teacher_dir, steps, **sections):
    from opdplug.config import parse_config

    data = {
        "run": {"output_dir": str(tmp_path / "run"), "steps": steps, "batch_size": 4, "progress": False, "resume": False},
        "student": {"tiny": "tiny"},
        "teacher": {"path": str(teacher_dir)},
        "task": {"name": "agent", "options": {"env": "gridnav", "min_horizon": 2, "max_horizon": 2, "max_turns": 4}},
        "rollout": {"sampler": "agent", "temperature": 1.0},
        "loss": {"support": "full", "divergence": "reverse_kl"},
    }
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return parse_config(data, manager.plugin_tables())


def test_plain_agent_opd_trains(opd_manager, tmp_path, agent_teacher_dir):
    from opdplug.loop import train

    capture = Capture()
    manager = opd_manager(capture)
    config = agent_config(manager, tmp_path, agent_teacher_dir, 3, credit={"verifier": "agent"})
    result = train(config, manager)
    assert result.steps_done == 3 and result.final_model_dir is not None
    assert all(math.isfinite(m["loss"]) for m in result.history) and result.history[-1]["tokens"] > 0
    assert len(capture.batches) == 3
    for batch in capture.batches:
        loss, prod = batch.loss_mask_B_L.bool(), batch.producer_B_L
        assert loss.any() and (prod[loss] == PRODUCER_STUDENT).all()  # loss only on the student's actions
        assert not loss[prod != PRODUCER_STUDENT].any()
        assert batch.turn_ids_B_L.max() >= 1 and batch.on_policy_B.all()  # really multi-turn
        assert batch.rewards_B is not None and batch.rewards_B.shape == (4,)


@pytest.mark.parametrize("sampler,code", [("agent_expert", PRODUCER_TEACHER), ("agent_teacher", PRODUCER_TEACHER)])
def test_off_policy_agent_samplers_train(opd_manager, tmp_path, agent_teacher_dir, sampler, code):
    from opdplug.loop import train

    capture = Capture()
    manager = opd_manager(capture)
    config = agent_config(manager, tmp_path, agent_teacher_dir, 1, rollout={"sampler": sampler},
                          loss={"support": "sampled", "estimator": "nll"}, teacher={"scorer": "none"})
    result = train(config, manager)
    assert math.isfinite(result.history[-1]["loss"])
    (batch,) = capture.batches
    loss = batch.loss_mask_B_L.bool()
    assert loss.any() and (batch.producer_B_L[loss] == code).all() and not batch.on_policy_B.any()
    if sampler == "agent_expert":
        assert batch.rewards_B.tolist() == [1.0] * 4 and torch.all(batch.sampling_logprobs_B_L == 0)


def test_agent_sampler_on_a_non_agent_task_is_a_config_error(opd_manager, tmp_path, agent_teacher_dir):
    from opdplug.loop import train

    manager = opd_manager()
    config = agent_config(manager, tmp_path, agent_teacher_dir, 1, student={"tiny": "tiny", "path": ""},
                          teacher={"path": "", "scorer": "self"}, task={"name": "sumchain", "options": {}})
    with pytest.raises(ConfigError, match='task\\] name = "agent"'):
        train(config, manager)
