"""bench/route_table.py: where a curve crosses a target, the compute each route needs to reach
the levels on the way to it (with "<=" bounds where RL never got there), an end-to-end run at a
tiny size (JSON, PNG, headline), and bad input as one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def curve(*pairs):
    return [{"step": 10 * i, "flops": f * 1e9, "accuracy": a} for i, (f, a) in enumerate(pairs)]


def test_crossing_interpolates_between_the_checkpoints_around_the_first_crossing():
    import route_table

    points = curve((0, 0.2), (100, 0.3), (200, 0.5), (300, 0.4), (400, 0.6))
    assert route_table.crossing(points, 0.4)["flops"] == pytest.approx(150e9)
    assert route_table.crossing(points, 0.4)["step"] == 20
    assert route_table.crossing(points, 0.55)["flops"] == pytest.approx(375e9)
    assert route_table.crossing(points, 0.7) is None
    assert route_table.crossing(points, 0.1) == {"flops": 0.0, "step": 0}


def test_levels_compare_opd_with_rl_and_sft_on_the_way_to_the_target():
    import route_table

    res = {"plateau": [{"step": 0, "accuracy": 0.1}, {"step": 50, "accuracy": 0.2}], "target": 0.6, "routes": {
        "SFT": {"points": curve((0, 0.2), (100, 0.4), (200, 0.5))},
        "RL": {"points": curve((0, 0.2), (500, 0.3), (1000, 0.3))},
        "OPD": {"points": curve((0, 0.2), (100, 0.3), (200, 0.6))},
    }}
    rows = route_table.levels_of(res)
    assert [r["fraction"] for r in rows] == list(route_table.LEVELS)
    assert [r["accuracy"] for r in rows] == pytest.approx([0.3, 0.4, 0.5, 0.6])
    first, second, last = rows[0], rows[1], rows[-1]
    # at 0.3 every route gets there: RL at 500, OPD at 100, SFT at 50 GFLOPs
    assert first["gflops"] == pytest.approx({"SFT": 50.0, "RL": 500.0, "OPD": 100.0})
    assert first["opd_over_rl"] == {"ratio": pytest.approx(0.2), "bound": False}
    assert first["opd_over_sft"] == pytest.approx(2.0)
    # at 0.4 RL never does: the bound divides by all RL spent
    assert second["gflops"]["RL"] is None and second["opd_over_rl"] == {"ratio": pytest.approx((100 + 100 / 3) / 1000), "bound": True}
    # at the target only OPD arrives: no ratio to SFT
    assert last["gflops"] == {"SFT": None, "RL": None, "OPD": pytest.approx(200.0)}
    assert "opd_over_sft" not in last


def run_bench(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "route_table.py"), *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=400, env=env)


@pytest.mark.timeout(420)
def test_every_route_runs_end_to_end_at_a_tiny_size(tmp_path):
    proc = run_bench(tmp_path, "--grounds", "sumchain", "--plateau-steps", "2", "--plateau-every", "2", "--steps", "2",
                     "--every", "2", "--rl-steps", "2", "--rl-every", "2", "--eval-n", "4", "--batch", "8", "--group", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("OPD "), last
    assert "GFLOPs to reach each level" in proc.stdout
    out = tmp_path / "out"
    result = json.loads((out / "route_table_seed0.json").read_text())
    assert (out / "route_table_seed0.png").stat().st_size > 0
    assert result["headlines"] == [last]
    res = result["results"]["sumchain"]
    assert set(res["routes"]) == {"SFT", "RL", "OPD", "RL+OPD"}
    assert [p["step"] for p in res["routes"]["RL"]["points"]] == [0, 2]
    assert len(res["levels"]) == 4 and res["routes"]["OPD"]["points"][-1]["flops"] > 0


def test_bad_input_is_one_line(tmp_path):
    proc = run_bench(tmp_path, "--grounds", "sumchian")
    assert proc.returncode != 0 and proc.stderr.strip() == "route_table: unknown ground or route sumchian"
    proc = run_bench(tmp_path, "--batch", "30")
    assert proc.returncode != 0 and "multiple of --group" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_plateau_pool_trains_on_the_first_rows_only(tmp_path):
    import route_setups

    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}", "answer": str(i)}) + "\n" for i in range(10)))
    ground = route_setups.Ground("g", "", tmp_path, {}, {"task": {"name": "dataset", "options": {"path": str(source), "x": 1}}},
                                 {}, "reference", 1e-3, lambda p: 0.0, pool_source=source)
    sections = ground.pool_sections(tmp_path / "work", 3)
    pool = Path(sections["task"]["options"]["path"])
    assert [json.loads(line)["prompt"] for line in pool.read_text().splitlines()] == ["p0", "p1", "p2"]
    assert sections["task"]["options"]["x"] == 1 and ground.sections["task"]["options"]["path"] == str(source)
    with pytest.raises(ValueError, match="more rows than"):
        ground.pool_sections(tmp_path / "work", 11)


def test_a_plateau_pool_on_sumchain_is_a_usage_error(tmp_path):
    proc = run_bench(tmp_path, "--grounds", "sumchain", "--plateau-pool", "64")
    assert proc.returncode != 0 and proc.stderr.strip().startswith("route_table: --plateau-pool")
