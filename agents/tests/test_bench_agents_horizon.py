"""bench/agents_horizon.py --quick runs end to end (a QUICK teacher in a private cache): every
method is probed for its calls per step, decays its learning rate over its own budget, stops at
the budget, and the JSON, the PNG and the headline are written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_loader import load_bench


@pytest.mark.timeout(240)
def test_quick_bench_trains_every_method_to_its_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    bench = load_bench(monkeypatch, "agents_horizon.py")
    out = tmp_path / "out"
    results = bench.main(["--quick", "--output-dir", str(out)])
    data = json.loads((out / "agents_horizon.json").read_text())
    assert (out / "agents_horizon.png").stat().st_size > 0
    budget = data["config"]["budget"]
    assert set(data["methods"]) == {"BC", "OPD", "DAgger", "SCoRe", "SCoRe-onpolicy"}
    for name, info in data["methods"].items():
        per_step = info["probe_calls_per_step"]
        assert per_step >= 1 and info["schedule_steps"] == -(-budget // per_step) + 1, name
        # the run stops after the step that reaches the budget, or at the end of its schedule
        assert info["teacher_calls"] >= budget or info["steps"] == info["schedule_steps"], name
        assert Path(info["model_dir"], "config.json").is_file(), name
    assert data["methods"]["OPD"]["probe_calls_per_step"] == data["config"]["batch"]  # one scoring pass per episode
    assert not list((out / "agents_horizon").glob("*-probe"))  # probe runs are thrown away
    assert set(data["success"]) == {"teacher", "warm start", "BC", "OPD", "DAgger", "SCoRe", "SCoRe-onpolicy"}
    assert set(results["headline"]["score_vs_opd"]) == {"SCoRe", "SCoRe-onpolicy", "OPD", "score_matches_opd"}
    assert results["headline"]["horizon"] == max(data["config"]["eval_horizons"])
    # bench/agents_score_offpolicy.py reads that output: the key steps of both writers, measured
    offpolicy = load_bench(monkeypatch, "agents_score_offpolicy.py")
    assert offpolicy.main([str(out), "--n", "6", "--horizon", "2"]) == 0
    measured = json.loads((out / "agents_score_offpolicy.json").read_text())
    for writer in ("teacher", "student"):
        assert set(measured[writer]) >= {"key_steps", "student_logprob_per_token", "student_action_logprob", "key_step_optimal"}


@pytest.mark.timeout(240)
def test_env_options_reach_the_students_and_the_eval_not_the_teacher(tmp_path, monkeypatch):
    """``--env-options fatal_errors=true``: the students train, and every model is evaluated, on
    the variant; the teacher is the recipe's cached one (the same directory as without it)."""
    monkeypatch.setenv("OPDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    bench = load_bench(monkeypatch, "agents_horizon.py")
    from opdplug_agents import recipe as recipes

    out = tmp_path / "out"
    results = bench.main(["--quick", "--methods", "OPD", "--env-options", "fatal_errors=true", "--env-options",
                          "wall_density=0.0", "--output-dir", str(out)])
    data = json.loads((out / "agents_horizon.json").read_text())
    assert data["config"]["env_options"] == {"fatal_errors": True, "wall_density": 0.0}
    assert data["recipe"]["env_options"] == {"size": 4, "wall_density": 0.0, "fatal_errors": True}
    assert data["teacher_dir"] == str(recipes.teacher_path(recipes.QUICK["gridnav"]))
    assert set(results["methods"]) == {"OPD"}
    for run in ("warm_start", "opd"):  # what the students trained on
        assert "fatal_errors = true" in (out / "agents_horizon" / run / "config.toml").read_text(), run


def test_env_options_parse_json_values_and_refuse_malformed_items(monkeypatch):
    bench = load_bench(monkeypatch, "agents_horizon.py")
    parser = bench.argparse.ArgumentParser()
    assert bench.parse_env_options(parser, ["fatal_errors=true", "size=5", "name=abc", "d=0.1"]) == {
        "fatal_errors": True, "size": 5, "name": "abc", "d": 0.1}
    with pytest.raises(SystemExit):
        bench.parse_env_options(parser, ["fatal_errors"])
