"""SCoRe correction and DAgger: exact prefixes, key steps, masks, producers, repairs; two short
training runs through the real loop."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from agent_stubs import Capture, bad_student
from opdplug_local import tiny
from opdplug.types import PRODUCER_ENV, PRODUCER_STUDENT, PRODUCER_TEACHER
from opdplug_agents import accounting, textio
from opdplug_agents.correction import (
    AgentScore,
    correct_episodes,
    correction_batch,
    dagger_episodes,
    dagger_states,
)
from opdplug_agents.envs import BUILTIN
from opdplug_agents.locators import ExpertLocator, LocatorDeps
from opdplug_agents.registries import env_class, installed_registry
from opdplug_agents.rollout import ExpertActor, run_episodes
from opdplug_agents.task import AgentTask

SPECS = [("swapsort", seed, {"horizon": 5, "max_turns": 6}) for seed in range(4)]
"""Swapsort with no slack: the expert needs exactly the 6 turns allowed, so a wasted swap fails."""


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(textio.agent_words(sorted(cls.name for cls in BUILTIN)))


def correct(tok, student, max_repairs, specs=SPECS):
    deps = LocatorDeps(tokenizer=tok)
    c = correct_episodes(specs, student, ExpertActor(), ExpertLocator(), deps, tok, max_action_tokens=40,
                         temperature=1.0, max_repairs=max_repairs)
    return c, deps


def prefix_len(episode, k):
    """Tokens of the episode up to the start of turn k's action (its observation included)."""
    return len(episode.bos_ids) + sum(len(t.token_ids) for t in episode.turns[:k]) + len(episode.turns[k].observation_ids)


def test_score_rewrites_only_the_located_turn_and_the_student_resumes(tok):
    c, deps = correct(tok, bad_student({2}), max_repairs=1)
    assert not any(e.success for e in c.original) and all(e.success for e in c.corrected)  # succeeds more often
    assert c.first_errors == [2] * 4 and c.key_turns == [[2]] * 4
    for before, after in zip(c.original, c.corrected):
        n = prefix_len(before, 2)
        assert after.token_ids[:n] == before.token_ids[:n]  # the verified prefix, exact ids
        assert [t.action_logprobs for t in after.turns[:2]] == [t.action_logprobs for t in before.turns[:2]]
        assert [t.producer for t in after.turns] == ["student", "student", "expert", "student", "student", "student"]
        assert after.turns[2].action_text != before.turns[2].action_text  # the mistake is gone
        env = env_class(after.env)(**after.options)
        env.reset(seed=after.seed)
        for t in after.turns:  # the corrected trajectory holds no mistake at all
            assert env.is_optimal(t.action_text)
            env.step(t.action_text)
    assert deps.stats["located"] == 4


def test_max_repairs_is_honoured(tok):
    student = bad_student({2, 4})
    c0, _ = correct(tok, student, max_repairs=0)
    assert c0.corrected == c0.original and c0.key_turns == [[]] * 4 and c0.first_errors == [2] * 4
    c1, _ = correct(tok, student, max_repairs=1)
    assert c1.key_turns == [[2]] * 4 and not any(e.success for e in c1.corrected)  # turn 4 still wrong
    assert all(e.turns[4].producer == "student" for e in c1.corrected)
    c2, deps = correct(tok, student, max_repairs=2)
    assert c2.key_turns == [[2, 4]] * 4 and all(e.success for e in c2.corrected)
    for a, b in zip(c1.corrected, c2.corrected):  # the second repair keeps the first one's prefix
        n = prefix_len(a, 4)
        assert b.token_ids[:n] == a.token_ids[:n]
    c5, _ = correct(tok, student, max_repairs=5)
    assert c5.key_turns == c2.key_turns  # nothing left to repair


def test_score_batch_rows_masks_producers_and_rewards(tok):
    c, _ = correct(tok, bad_student({2, 4}), max_repairs=2)
    prompts = [e.prompt() for e in c.original]
    batch = correction_batch(c, prompts, pad_id=tok.pad_token_id, key_reward="optimal")
    B = len(SPECS)
    assert batch.batch_size == B + 2 * B  # corrected trajectories, then one short row per key step
    loss, prod, key, turn = batch.loss_mask_B_L.bool(), batch.producer_B_L, batch.key_step_B_L, batch.turn_ids_B_L
    assert not loss[prod == PRODUCER_ENV].any() and not key[~loss].any()
    for b, e in enumerate(c.corrected):
        assert batch.input_ids_B_L[b, : len(e.token_ids)].tolist() == list(e.token_ids)
        # Loss on every action: student prefix, key steps, student continuation.
        assert int(loss[b].sum()) == sum(len(t.action_ids) for t in e.turns)
        assert set(turn[b][key[b]].tolist()) == {2, 4} and (prod[b][key[b]] == PRODUCER_TEACHER).all()
        assert (prod[b][loss[b] & ~key[b]] == PRODUCER_STUDENT).all()
    for r, (i, k) in enumerate([(i, k) for i in range(B) for k in (2, 4)]):
        b = B + r
        e = c.corrected[i]
        n = prefix_len(e, k) + len(e.turns[k].action_ids)
        assert int(batch.attention_mask_B_L[b].sum()) == n
        assert batch.input_ids_B_L[b, :n].tolist() == list(e.token_ids[:n])  # verified prefix + key step
        assert set(turn[b][loss[b]].tolist()) == {k} and torch.equal(loss[b], key[b])  # loss on the key step only
        assert batch.prompts[b] == prompts[i]
    assert batch.rewards_B.tolist() == [1.0] * (3 * B)  # successes; every expert key step is optimal
    assert not batch.on_policy_B.any()
    kept = batch.select(torch.tensor([0, B]))
    assert torch.equal(kept.key_step_B_L, key[[0, B]])
    plain = correction_batch(c, prompts, pad_id=tok.pad_token_id, short_horizon=False)
    assert plain.batch_size == B


def test_episodes_without_a_located_error_stay_the_students(tok):
    clean = [("gridnav", s, {"horizon": 3}) for s in range(3)]
    c, deps = correct(tok, ExpertActor("student"), max_repairs=2, specs=clean)
    assert c.first_errors == [None] * 3 and c.corrected == c.original
    batch = correction_batch(c, [e.prompt() for e in c.original], pad_id=tok.pad_token_id)
    assert batch.batch_size == 3 and not batch.key_step_B_L.any() and batch.on_policy_B.all()


def test_dagger_rows_are_student_states_with_teacher_actions(tok):
    episodes = run_episodes(SPECS[:3], bad_student({1, 3}), tok, max_action_tokens=40, temperature=1.0, generator=None)
    states = dagger_states([e.num_turns for e in episodes], 0, None)
    assert states == [list(range(e.num_turns)) for e in episodes]
    rows, source = dagger_episodes(episodes, states, ExpertActor(), tok, max_action_tokens=40, temperature=1.0)
    assert len(rows) == sum(e.num_turns for e in episodes) and source == [i for i, e in enumerate(episodes) for _ in range(e.num_turns)]
    from opdplug_agents.rollout import episodes_to_batch

    batch = episodes_to_batch(rows, train_on=("teacher", "expert"), prompts=[episodes[i].prompt() for i in source])
    for b, (row, i, t) in enumerate(zip(rows, source, [t for s in states for t in s])):
        e = episodes[i]
        assert row.num_turns == t + 1 and all(x.producer == "student" for x in row.turns[:t])
        n = prefix_len(e, t)
        assert row.token_ids[:n] == e.token_ids[:n]  # the student's history, exact
        env = env_class(e.env)(**e.options)
        env.reset(seed=e.seed)
        env.replay([x.action_text for x in e.turns[:t]])
        assert row.turns[t].producer == "expert"
        assert list(row.turns[t].action_ids) == textio.encode_action(tok, env.expert_action())
        loss = batch.loss_mask_B_L[b].bool()
        assert set(batch.turn_ids_B_L[b][loss].tolist()) == {t} and int(loss.sum()) == len(row.turns[t].action_ids)
        assert (batch.producer_B_L[b][loss] == PRODUCER_TEACHER).all()
    sub = dagger_states([6, 2, 9], 3, torch.Generator().manual_seed(0))
    assert [len(s) for s in sub] == [3, 2, 3] and all(s == sorted(set(s)) and max(s) < n for s, n in zip(sub, [6, 2, 9]))


def test_agent_score_options_are_checked():
    with pytest.raises(ValueError, match="max_repairs"):
        AgentScore(max_repairs=-1)


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    tok = tiny.build_tokenizer(AgentTask.words())
    path = tmp_path_factory.mktemp("score_teacher")
    tiny.save_pretrained_pair(tiny.build_model("tiny", tok, seed=1), tok, path)
    return path


def train_config(manager, tmp_path, teacher_dir, rollout, credit=None):
    from opdplug.config import parse_config

    return parse_config({
        "run": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 2, "progress": False, "resume": False},
        "student": {"tiny": "tiny"},
        "teacher": {"path": str(teacher_dir)},
        "task": {"name": "agent", "options": {"env": "gridnav", "min_horizon": 2, "max_horizon": 2, "max_turns": 3}},
        "rollout": {"temperature": 1.0, **rollout},
        "credit": credit or {},
        "loss": {"support": "full", "divergence": "reverse_kl"},
    }, manager.plugin_tables())


@pytest.mark.parametrize("options,message", [
    ({"locator": "oracle"}, "rollout.options.locator = 'oracle': unknown locator 'oracle'; allowed: expert,"),
    ({"locator": "teacher_logprob", "locator_options": {"treshold": -1}}, "unknown key 'treshold'"),
])
def test_a_bad_locator_fails_before_anything_loads(opd_manager, tmp_path, teacher_dir, options, message):
    """The plugin's opd_validate resolves the locator in the run's registry: one line, no models."""
    from opdplug.errors import ConfigError
    from opdplug.prepare import validate

    manager = opd_manager()
    config = train_config(manager, tmp_path, teacher_dir, {"sampler": "agent_score", "options": options})
    with pytest.raises(ConfigError) as info:
        validate(config, manager)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rollout,credit", [
    ({"sampler": "agent_score", "options": {"locator": "expert", "key_step_actor": "teacher", "max_repairs": 2}},
     {"scheme": "turn_level", "options": {"key_weight": 2.0}}),
    ({"sampler": "agent_dagger", "options": {"states_per_episode": 2}}, None),
])
def test_two_training_steps(opd_manager, tmp_path, teacher_dir, rollout, credit):
    from opdplug.loop import train

    capture = Capture()
    manager = opd_manager(capture)
    result = train(train_config(manager, tmp_path, teacher_dir, rollout, credit), manager)
    assert result.steps_done == 2 and all(math.isfinite(m["loss"]) for m in result.history)
    assert len(capture.batches) == 2
    for batch, metrics in zip(capture.batches, result.history):
        loss = batch.loss_mask_B_L.bool()
        assert loss.any() and not loss[batch.producer_B_L == PRODUCER_ENV].any()
        calls = metrics["agent/teacher_calls"]
        assert metrics["agent/episodes"] == 2 and metrics["agent/rows"] == batch.batch_size
        assert metrics["agent/teacher_scored_rows"] == batch.batch_size  # the loss's local scorer
        scored = metrics["agent/teacher_scored_rows"]
        # One definition: the loss's scored rows are teacher calls too, and their tokens are counted.
        assert metrics["agent/teacher_tokens"] >= int(batch.attention_mask_B_L.sum())
        if rollout["sampler"] == "agent_score":
            # An untrained student always errs at once (the expert locator), one key step per repair.
            assert metrics["agent/located"] == 2 and calls - scored == metrics["agent/repairs"] == metrics["agent/teacher_actions"]
            assert metrics["agent/first_error_positions"] == [0, 0]
            assert batch.key_step_B_L.any() and (batch.producer_B_L[batch.key_step_B_L] == PRODUCER_TEACHER).all()
            assert batch.batch_size == 2 + metrics["agent/short_rows"]
        else:
            assert calls - scored == metrics["agent/dagger_rows"] == batch.batch_size <= 4
            assert (batch.producer_B_L[loss] == PRODUCER_TEACHER).all()


def test_accounting_sums_micro_batches_and_derives_teacher_calls():
    ctx = SimpleNamespace(scratch={})
    accounting.record(ctx, episodes=2, success=1, teacher_actions=5, judge_calls=2, first_errors=[1, 3])
    accounting.record(ctx, episodes=2, success=2, teacher_scorings=1)
    m = accounting.step_metrics(ctx)
    assert m["agent/teacher_calls"] == 8 and m["agent/success_rate"] == 0.75 and m["agent/first_error_positions"] == [1, 3]
    assert accounting.step_metrics(ctx) == {} and accounting.totals(ctx)["teacher_calls"] == 8
    accounting.record(ctx, teacher_scored_rows=4, teacher_tokens=100)  # agent OPD's scoring pass
    assert accounting.step_metrics(ctx)["agent/teacher_calls"] == 4 and accounting.totals(ctx)["teacher_calls"] == 12


def test_every_agent_sampler_reports_teacher_calls(tok):
    """Plain OPD, behaviour cloning (teacher or expert), DAgger and SCoRe: the same keys."""
    from opdplug_agents.correction import AgentDagger
    from opdplug_agents.samplers import AgentExpert, AgentOnPolicy, AgentTeacher

    model = tiny.build_model("tiny", tok, seed=0)
    ctx = SimpleNamespace(
        config=SimpleNamespace(rollout=SimpleNamespace(temperature=1.0, top_p=1.0, max_new_tokens=0)),
        task=AgentTask(tok, env="gridnav", min_horizon=2, max_horizon=2, max_turns=3), tokenizer=tok,
        teacher=model, student_module=lambda: model, generator=lambda *parts: torch.Generator().manual_seed(0), scratch={},
        registry=installed_registry(),
    )
    prompts = ctx.task.prompts(2, seed=0)
    samplers = {"agent": AgentOnPolicy(), "agent_teacher": AgentTeacher(), "agent_expert": AgentExpert(),
                "agent_dagger": AgentDagger(teacher_actor="expert"),
                "agent_score": AgentScore(key_step_actor="expert", max_repairs=1)}
    for name, sampler in samplers.items():
        batch = sampler(ctx, prompts, 0)
        m = accounting.step_metrics(ctx)
        assert {"agent/teacher_calls", "agent/teacher_actions", "agent/expert_actions", "agent/episodes", "agent/rows"} <= set(m), name
        assert m["agent/episodes"] == 2 and m["agent/rows"] == batch.batch_size
        turns = int(batch.turn_ids_B_L.max(dim=1).values.add(1).sum())
        expected = {"agent": (0, 0), "agent_teacher": (turns, 0), "agent_expert": (0, turns),
                    "agent_dagger": (0, batch.batch_size), "agent_score": (0, m["agent/repairs"] if "agent/repairs" in m else 0)}
        assert (m["agent/teacher_calls"], m["agent/expert_actions"]) == expected[name], name
        if name == "agent_teacher":  # its tokens: per teacher action, the context it saw and the action
            assert m["agent/teacher_tokens"] > int(batch.attention_mask_B_L.sum())
    assert accounting.totals(ctx)["episodes"] == 10
