"""bench/support_claim.py runs end to end at a tiny size with a subset of the supports and a
scaled learning rate (the route table's shared checkpoint, JSON, PNG, headline); its headline
compares only what ran; bad input is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def run_bench(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "support_claim.py"), *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=400, env=env)


@pytest.mark.timeout(420)
def test_subset_at_a_scaled_learning_rate_runs_end_to_end(tmp_path):
    proc = run_bench(tmp_path, "--plateau-steps", "2", "--plateau-every", "2", "--steps", "2", "--every", "2",
                     "--eval-n", "4", "--batch", "8", "--variants", "sampled-token,top-1", "--lr-scale", "0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("top-1 ") and "top-4" not in last, last
    out = tmp_path / "out"
    result = json.loads((out / "support_claim_sumchain_seed0_lr0.1.json").read_text())
    assert (out / "support_claim_sumchain_seed0_lr0.1.png").stat().st_size > 0
    assert result["headline"] == last and set(result["curves"]) == {"sampled-token", "top-1"}
    assert [p["step"] for p in result["curves"]["top-1"]["points"]] == [0, 2]
    work = out / "support_claim" / "sumchain-seed0_lr0.1"
    assert _lr(work / "top-1") == pytest.approx(0.1 * _lr(work / "plateau"))


def _lr(run_dir: Path) -> float:
    """``[run] lr`` as the run wrote it to its config.toml."""
    lines = (run_dir / "config.toml").read_text().splitlines()
    return float(next(line for line in lines if line.replace(" ", "").startswith("lr=")).split("=")[1])


def test_headline_compares_only_what_ran():
    import support_claim

    s = {k: {"mean": m} for k, m in [("sampled-token", 0.03), ("top-1", 0.02), ("top-4", 0.29), ("full", 0.33)]}
    assert support_claim.headline(s) == ("top-1 below sampled-token (mean over checkpoints 0.020 vs 0.030); top-4 matches "
                                         "or beats sampled-token (0.290 vs 0.030); full 0.330")
    assert support_claim.headline({"top-4": {"mean": 0.1}}).startswith("(no comparison")


@pytest.mark.parametrize("args, message", [(["--variants", "top-3"], "unknown variant top-3"),
                                           (["--lr-scale", "0"], "--lr-scale must be positive"),
                                           (["--steps", "3", "--every", "2"], "--steps must be a multiple")])
def test_bad_input_is_one_line(tmp_path, args, message):
    proc = run_bench(tmp_path, *args)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
