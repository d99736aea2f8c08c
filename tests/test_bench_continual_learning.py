"""bench/continual_learning.py --quick runs end to end (a QUICK original model in a private
cache): SFT on facts as a LoRA adapter, then self-distillation from the base (adapter off),
both metrics at the three points, JSON, PNG and a headline; bad input is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPDPLUG_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "continual_learning.py"), *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=280, env=env)


@pytest.mark.timeout(300)
def test_quick_bench_measures_both_metrics_at_three_points(tmp_path):
    proc = run_bench(tmp_path, "--quick", "--sft-behaviour-share", "0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(("Reproduced", "NOT reproduced")), last
    out = tmp_path / "out"
    result = json.loads((out / "continual_learning_quick_seed0.json").read_text())
    assert (out / "continual_learning_quick_seed0.png").stat().st_size > 0
    assert result["headline"] == last
    assert len(result["stages"]) == 3
    for m in result["stages"].values():
        assert 0.0 <= m["behaviour"] <= 1.0 and 0.0 <= m["facts"] <= 1.0
    assert [p["step"] for p in result["curves"]["self_distill"]] == [0, 2, 4]
    assert result["self_distill_loss"][0] > 0  # the SFT adapter was loaded: the student is not its base
    work = out / "continual_learning" / "quick-seed0"
    distill = tomllib.loads((work / "self_distill" / "config.toml").read_text())
    assert distill["teacher"]["scorer"] == "base_model" and distill["student"]["adapter"] == str(work / "sft_facts")
    assert distill["task"]["name"] == "sumchain"
    sft = tomllib.loads((work / "sft_facts" / "config.toml").read_text())
    assert sft["student"]["lora_r"] > 0 and sft["rollout"]["sampler"] == "reference"
    rows = [json.loads(line) for line in (work / "sft.jsonl").read_text().splitlines()]
    assert any(r["answer"].startswith("a ") for r in rows)  # behaviour traces are mixed in
    assert (work / "facts_eval.toml").is_file() and (work / "behaviour_eval.toml").is_file()


@pytest.mark.parametrize("args, message", [
    (["--sft-steps", "5", "--sft-every", "2"], "--sft-steps must be a multiple of --sft-every"),
    (["--facts", "0"], "--facts must be at least 1"),
    (["--sft-behaviour-share", "1"], "--sft-behaviour-share must be in [0, 1)"),
    (["--facts", "600"], "--facts must be at most 512"),
    (["--tag", "a/b"], "--tag must be letters"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    proc = run_bench(tmp_path, "--quick", *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
