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
