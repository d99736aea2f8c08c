"""Multi-turn evaluation: the expert solves everything, models are scored by horizon, first
errors land on the right turn, and the report serialises."""
from __future__ import annotations

import json

import pytest

from opdplug_local import tiny
from opdplug.errors import ConfigError
from opdplug_agents import textio
from opdplug_agents.evaluate import (
    EXPERT,
    first_error_cost_to_go,
    format_table,
    plot_success,
    success_by_horizon,
)
from opdplug_agents.registries import env_class
from opdplug_agents.rollout import ExpertActor, FixedTurn, run_episodes
from opdplug_agents.task import AgentTask
from opdplug_agents.tools import format_call


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(AgentTask.words())


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model("tiny", tok, seed=0)


@pytest.mark.parametrize("env,turns", [("calc_lookup", lambda h: h + 2), ("gridnav", lambda h: h), ("swapsort", lambda h: h + 1)])
def test_the_expert_solves_every_horizon_without_errors(tok, env, turns):
    report = success_by_horizon(EXPERT, tok, env, [2, 3], 4, seed=0)
    assert report.success == {2: 1.0, 3: 1.0}
    assert report.mean_turns == {2: turns(2), 3: turns(3)}
    for r in report.results.values():
        assert r.first_errors == (None,) * 4 and r.first_error_histogram == {"none": 4} and r.mean_first_error is None


def test_an_untrained_model_is_scored_reproducibly(tok, model):
    a = success_by_horizon(model, tok, "gridnav", [1, 2], 3, seed=5, batch=2, max_turns=3)
    b = success_by_horizon(model, tok, "gridnav", [1, 2], 3, seed=5, batch=3, max_turns=3)
    assert a.to_dict() == b.to_dict()  # greedy and batch-independent
    for r in a.results.values():
        assert r.n == 3 and 0.0 <= r.success <= 1.0 and len(r.first_errors) == 3
        assert sum(r.first_error_histogram.values()) == 3
        assert 1 <= r.mean_turns <= 3
    data = json.loads(a.to_json())
    assert set(data["horizons"]) == {"1", "2"} and data["env"] == "gridnav"
    assert data["first_error_source"] in ("locator:expert", "cost_to_go")
    assert all(1 <= v["distinct"] <= 3 for v in data["horizons"].values())
    assert model.training  # the model's mode is left as it was


def test_first_error_is_the_first_non_optimal_student_turn(tok):
    # calc_lookup, 3 people: the student looks up the right person, then a distractor; the
    # expert takes over from there (and recovers). The first error is turn 1.
    spec = ("calc_lookup", 11, {"horizon": 3, "split": "eval"})
    env = env_class("calc_lookup")(horizon=3, split="eval")
    env.reset(seed=11)
    table = env.episode
    chain = [table.names[i] for i in table.chain()]
    wrong = next(n for n in table.names if n not in chain)
    prefix = [FixedTurn(tuple(textio.encode_action(tok, format_call("lookup", name=chain[0]))), "student"),
              FixedTurn(tuple(textio.encode_action(tok, format_call("lookup", name=wrong))), "student")]
    (episode,) = run_episodes([spec], ExpertActor(), tok, max_action_tokens=24, temperature=0, generator=None, prefixes=[prefix])
    assert episode.success and [t.producer for t in episode.turns[:2]] == ["student", "student"]
    assert first_error_cost_to_go(episode) == 1
    (clean,) = run_episodes([spec], ExpertActor(), tok, max_action_tokens=24, temperature=0, generator=None, prefixes=[prefix[:1]])
    assert first_error_cost_to_go(clean) is None
    # The SCoRe expert locator (what success_by_horizon uses when it is there) agrees.
    locators = pytest.importorskip("opdplug_agents.locators")
    assert locators.ExpertLocator().locate([episode, clean], locators.LocatorDeps(tokenizer=tok)) == [1, None]


def test_bad_arguments_are_value_errors(tok, model):
    with pytest.raises(ConfigError, match="env = 'gridnva': unknown environment"):
        success_by_horizon(model, tok, "gridnva", [2], 2)
    with pytest.raises(ValueError, match="horizons must be in"):
        success_by_horizon(model, tok, "calc_lookup", [99], 2)
    with pytest.raises(ValueError, match="model must be"):
        success_by_horizon("teacher", tok, "calc_lookup", [2], 2)


def test_table_and_plot(tok, tmp_path):
    report = success_by_horizon(EXPERT, tok, "swapsort", [1, 2], 2, seed=0)
    table = format_table({"expert": report})
    assert "h=1" in table and "1.000" in table
    plot_success({"expert": report}, tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
