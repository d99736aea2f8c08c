"""bench/agents_judge.py --quick against a scripted local chat endpoint (``--judge-url``; the real
SGLang-served judge is the script's default, run by hand and in the README): it scores the judge
against the expert's labels and reports its cost; bad arguments are one line."""
from __future__ import annotations

import json

import pytest
from bench_loader import load_bench
from test_bench_agents_locators import null_judge


@pytest.mark.timeout(240)
def test_quick_judge_bench_scores_and_costs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    bench = load_bench(monkeypatch, "agents_judge.py")
    server = null_judge()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
        results = bench.main(["--quick", "--envs", "gridnav", "--judge-url", url, "--output-dir", str(tmp_path)])
    finally:
        server.shutdown()
        server.server_close()
    data = json.loads((tmp_path / "agents_judge.json").read_text())
    assert data["all"]["n"] == 8 and set(data["by_env"]) == {"gridnav"}  # QUICK: h = 1, 2, 4 episodes each
    assert data["all"]["requests"] <= 8 and data["all"]["unparseable"] == 0  # null is a valid answer
    assert data["all"]["n_flagged"] == 0 and data["all"]["exact"] == data["all"]["n_clean"] / 8
    assert data["judge"] == {"url": url, "model": "default"} and data["config"]["json_schema"] is True
    assert results["majority_label"]["exact"] >= data["all"]["exact"]


def test_bad_arguments_are_one_line(monkeypatch):
    bench = load_bench(monkeypatch, "agents_judge.py")
    with pytest.raises(SystemExit, match=r"^agents_judge: --judge-url must start with http:// or https://, got 'localhost:1'$"):
        bench.main(["--judge-url", "localhost:1"])
    with pytest.raises(SystemExit, match=r"^agents_judge: --envs: no weak student recipe for swapsort; known: gridnav, calc_lookup$"):
        bench.main(["--envs", "swapsort"])
