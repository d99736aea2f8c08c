"""bench/agents_locators.py --quick runs end to end (QUICK teachers and students in a private
cache) and writes a JSON row per locator with accuracies in [0, 1]."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bench_loader import load_bench

ROOT = Path(__file__).resolve().parents[2]
RATES = ("exact", "within_one", "exact_on_errors", "within_one_on_errors", "early", "late", "missed",
         "false_alarm", "precision", "recall")


def null_judge():
    """A local chat endpoint that always answers {"first_error": null} (plumbing only)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": '{"first_error": null}'}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.mark.timeout(240)
def test_quick_bench_writes_a_row_per_locator(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    bench = load_bench(monkeypatch, "agents_locators.py")
    out = tmp_path / "out"
    results = bench.main(["--quick", "--output-dir", str(out)])
    data = json.loads((out / "agents_locators.json").read_text())
    assert (out / "agents_locators.png").stat().st_size > 0
    assert set(data["locators"]) == {"expert", "teacher_logprob", "teacher_rollouts", "llm_judge"}
    assert data["locators"]["llm_judge"] == {"options": {}, "measured": False, "note": bench.JUDGE_NOT_MEASURED}
    for name in ("expert", "teacher_logprob", "teacher_rollouts"):
        row = data["locators"][name]
        # 2 envs x 2 horizons x 4 episodes
        assert row["all"]["n"] == 16 and all(m["n"] == 8 for m in row["by_env"].values())
        for scope in [*row["by_env"].values(), row["all"]]:
            for key in RATES:
                assert scope[key] is None or 0.0 <= scope[key] <= 1.0, (name, key, scope[key])
    expert = data["locators"]["expert"]["all"]
    assert expert["exact"] == 1.0 and expert["within_one"] == 1.0 and data["locators"]["expert"]["cost"]["teacher_calls"] == 0
    assert data["locators"]["teacher_logprob"]["cost"]["teacher_scorings"] == 16
    assert data["sweep_matches_reported_row"] is True
    hist = data["episodes"]["gridnav"]["1"]["first_error_histogram"]
    assert sum(hist.values()) == 4
    assert results["headline"]["episodes"] == 16

    # --judge-url adds a measured llm_judge row (teachers and students now come from the cache)
    server = null_judge()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
        data = bench.main(["--quick", "--n", "1", "--output-dir", str(out), "--judge-url", url, "--judge-model", "m"])
    finally:
        server.shutdown()
        server.server_close()
    judge = data["locators"]["llm_judge"]
    assert judge["measured"] and judge["options"] == {"url": url, "model": "m"}
    assert judge["all"]["n_flagged"] == 0 and judge["cost"]["judge_calls"] >= 1
