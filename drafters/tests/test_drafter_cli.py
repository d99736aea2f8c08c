"""``opdplug drafter target|train|eval|export`` end to end on a tiny setup (seconds, not minutes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opdplug.cli import main


def run_cli(capsys, *argv) -> tuple[int, dict, str]:
    """``opdplug ARGV`` in-process; returns (exit code, the last stdout line as JSON or {}, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    try:
        out = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        out = {}
    return code, out, captured.err


def write_config(path: Path, target: Path, output_dir: Path, **tables) -> Path:
    data = {
        "run": {"output_dir": str(output_dir), "steps": 3, "batch_size": 4, "lr": 1e-3, "progress": False, "seed": 0},
        "student": {"tiny": "tiny", "init_seed": 5},
        "teacher": {"path": str(target), "scorer": "local"},
        "task": {"name": "sumchain", "options": {"min_len": 2, "max_len": 3}},
        "rollout": {"sampler": "on_policy", "temperature": 1.0},
        "loss": {"support": "full", "divergence": "tvd"},
        "drafter": {"kind": "standalone", "draft_tokens": 3, "eval_every": 2, "eval_prompts": 3, "eval_batch_size": 2,
                    "eval_temperatures": [0.0, 1.0]},
    }
    for name, table in tables.items():
        if table is None:
            data.pop(name)
        else:
            data[name] = table
    from opdplug.config import dump_toml

    path.write_text(dump_toml(data))
    return path


def test_distillspec_train_eval_export(quick_target, tmp_path, capsys):
    root = quick_target
    config = write_config(tmp_path / "on.toml", root / "target", tmp_path / "run")
    code, out, err = run_cli(capsys, "drafter", "train", str(config), "--json")
    assert code == 0, err
    run = Path(out["output_dir"])
    assert out["steps"] == 3 and Path(out["final_model"]).is_dir()
    assert set(out["acceptance"]) == {"T0", "T1"} and all(1.0 <= a <= 4.0 for a in out["acceptance"].values())
    assert Path(out["png"]).is_file()
    steps = [json.loads(line)["step"] for line in (run / "drafter_eval.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 3]  # the start, every eval_every, the end
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "drafter/accept_len_T0" in logged[1] and "drafter/accept_len_T0" not in logged[0]

    # eval: the target is found through the run's config; greedy output identical to the target's
    code, out, err = run_cli(capsys, "drafter", "eval", str(run), "--json", "--prompts", "3", "--reps", "1",
                             "--batch-sizes", "1,2", "--k", "3")
    assert code == 0, err
    assert out["kind"] == "standalone" and out["k"] == 3 and len(out["reports"]) == 4
    for report in out["reports"]:
        assert 1.0 <= report["acceptance_length"] <= 4.0 and report["speedup"] > 0
        assert len(report["position_acceptance"]) == 3
        if report["temperature"] == 0:
            assert report["identical_to_target"] is True

    # export: a plain Hugging Face directory with the target's tokenizer
    code, out, err = run_cli(capsys, "drafter", "export", str(run), str(tmp_path / "export"), "--json")
    assert code == 0, err
    assert out["kind"] == "standalone" and (tmp_path / "export" / "config.json").is_file()
    assert (tmp_path / "export" / "tokenizer.json").is_file()


def test_offpolicy_variant_trains(quick_target, tmp_path, capsys):
    config = write_config(tmp_path / "off.toml", quick_target / "target", tmp_path / "off",
                          rollout={"sampler": "teacher", "temperature": 1.0},
                          loss={"support": "full", "divergence": "forward_kl"})
    code, out, err = run_cli(capsys, "drafter", "train", str(config), "--json", "--steps", "2")
    assert code == 0, err
    assert out["steps"] == 2 and out["acceptance"] is not None


def test_installed_entry_point_eval_table(quick_target, tmp_path):
    """The console script, as a user runs it: a table, then the legend."""
    script = Path(sys.executable).parent / "opdplug"
    drafter = quick_target / "target"  # the target drafting for itself: everything accepted
    proc = subprocess.run([str(script), "drafter", "eval", str(drafter), "--target", str(drafter), "--prompts", "2",
                           "--reps", "1", "--batch-sizes", "2", "--temperatures", "0", "--k", "2"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if line.strip().startswith("2 "))
    assert row.split()[3] == "3.00"  # acceptance length before the EOS cut: k + 1
    assert row.split()[-1] == "yes"  # greedy output identical to target-only decoding
    assert "spec_accept_length" in proc.stdout


def test_one_line_errors(quick_target, tmp_path, capsys):
    code, _, err = run_cli(capsys, "drafter", "eval", str(tmp_path / "missing"), "--json")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = run_cli(capsys, "drafter", "eval", str(quick_target / "target"), "--json")
    assert code == 2 and err.count("\n") == 1 and "--target" in err
    config = write_config(tmp_path / "bad.toml", quick_target / "target", tmp_path / "bad",
                          drafter={"kind": "eagle3", "eagle3": {"no_such_option": 1}})
    code, _, err = run_cli(capsys, "drafter", "train", str(config))
    assert code == 2 and err.count("\n") == 1 and "no_such_option" in err
    config = write_config(tmp_path / "bad2.toml", quick_target / "target", tmp_path / "bad2", drafter={"kind": "medusa"})
    code, _, err = run_cli(capsys, "drafter", "train", str(config))
    assert code == 2 and "medusa" in err and err.count("\n") == 1


def test_eagle3_train_eval_export(quick_target, tmp_path, capsys):
    pytest.importorskip("opdplug_drafters.eagle3")
    config = write_config(tmp_path / "e3.toml", quick_target / "target", tmp_path / "e3",
                          student=None, rollout=None, loss=None,
                          drafter={"kind": "eagle3", "draft_tokens": 3, "eval_prompts": 2, "eval_batch_size": 2,
                                   "eagle3": {"eval_prompts": 2, "eval_every": 1, "max_new_tokens": 8, "ttt_steps": 2}})
    code, out, err = run_cli(capsys, "drafter", "train", str(config), "--json", "--steps", "2")
    assert code == 0, err
    assert out["kind"] == "eagle3" and out["steps"] == 2 and Path(out["png"]).is_file()
    assert (Path(out["output_dir"]) / "checkpoints" / "latest").is_file()  # the core loop's checkpoints
    assert all(1.0 <= a <= 4.0 for a in out["acceptance"].values())
    run = Path(out["output_dir"])
    code, out, err = run_cli(capsys, "drafter", "eval", str(run), "--json", "--prompts", "2", "--no-timing",
                             "--batch-sizes", "2", "--k", "2")
    assert code == 0, err
    assert out["kind"] == "eagle3" and out["reports"][0]["identical_to_target"] is True
    code, out, err = run_cli(capsys, "drafter", "export", str(run), str(tmp_path / "e3_export"), "--json")
    assert code == 0, err
    assert out["kind"] == "eagle3" and (tmp_path / "e3_export" / "config.json").is_file()
