"""A drafter kind from another distribution (``tests/thirdparty_drafter``, installed by ``make
test-env``), loaded through its ``opdplug`` entry point: ``opdplug drafter train``, ``eval``
and ``export`` take it from a config alone, exactly as they take the built-in kinds."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

from opdplug.cli import main
from opdplug.config import dump_toml
from opdplug.manager import make_plugin_manager

INSTALL = "pip install -c constraints.txt -e drafters/tests/thirdparty_drafter (make test-env does)"


def run_cli(capsys, *argv) -> tuple[int, dict, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    try:
        return code, json.loads(lines[-1]) if lines else {}, captured.err
    except json.JSONDecodeError:
        return code, {}, captured.err


def write_config(path: Path, target: Path, output_dir: Path, drafter: dict) -> Path:
    path.write_text(dump_toml({
        "run": {"output_dir": str(output_dir), "seed": 0, "progress": False},
        "teacher": {"path": str(target)},
        "task": {"name": "sumchain", "options": {"min_len": 2, "max_len": 3}},
        "drafter": drafter,
    }))
    return path


def test_the_kind_comes_from_the_entry_point():
    manager = make_plugin_manager()  # entry points only: nothing registered in code
    assert "bigram" in manager.registry.names("drafter_kinds"), f"the example drafter is not installed: {INSTALL}"
    assert manager.registry.owners["drafter_kinds"]["bigram"] == "example_drafter"
    info = manager.infos["example_drafter"]
    assert info.distribution == "opdplug-example-drafter" and not info.error


def test_train_eval_export_from_a_config_alone(quick_target, tmp_path, capsys):
    drafter = {"kind": "bigram", "draft_tokens": 3, "eval_prompts": 3, "eval_batch_size": 3,
               "options": {"prompts": 16, "max_new_tokens": 16}}
    config = write_config(tmp_path / "bigram.toml", quick_target / "target", tmp_path / "run", drafter)
    code, out, err = run_cli(capsys, "drafter", "train", str(config), "--json")
    assert code == 0, err
    assert out["kind"] == "bigram" and out["steps"] == 1 and out["pairs"] > 0
    assert set(out["acceptance"]) == {"T0", "T1"} and all(1.0 <= a <= 4.0 for a in out["acceptance"].values())
    run = Path(out["output_dir"])
    assert (run / "config.toml").is_file()  # the CLI records the run: eval finds the target there

    code, out, err = run_cli(capsys, "drafter", "eval", str(run), "--json", "--prompts", "3", "--no-timing",
                             "--batch-sizes", "3", "--k", "2")
    assert code == 0, err
    assert out["kind"] == "bigram"  # recognised by the kind's own `recognises`
    assert out["reports"][0]["identical_to_target"] is True and 1.0 <= out["reports"][0]["acceptance_length"] <= 3.0

    # Export through the kind's own export; the exported directory is a drafter the kind loads.
    code, out, err = run_cli(capsys, "drafter", "export", str(run), str(tmp_path / "out"), "--json")
    assert code == 0, err
    assert out["kind"] == "bigram" and Path(out["output_dir"]) == tmp_path / "out"
    assert (tmp_path / "out" / "bigram.json").is_file() and not list(tmp_path.glob(".out-*"))  # atomic: no leftovers
    code, again, err = run_cli(capsys, "drafter", "eval", str(tmp_path / "out"), "--target", str(quick_target / "target"),
                               "--json", "--prompts", "3", "--no-timing", "--batch-sizes", "3", "--k", "2")
    assert code == 0, err
    assert again["kind"] == "bigram" and again["reports"][0]["identical_to_target"] is True
    # The same drafter: the exported table is the trained one.
    assert json.loads((tmp_path / "out" / "bigram.json").read_text()) == json.loads((run / "bigram.json").read_text())
    # An existing export is not overwritten unless asked: one line.
    code, _, err = run_cli(capsys, "drafter", "export", str(run), str(tmp_path / "out"), "--json")
    assert code == 2 and err.count("\n") == 1 and "already exists" in err


def test_its_options_and_unknown_kinds_are_one_line_errors(quick_target, tmp_path, capsys):
    bad = write_config(tmp_path / "bad.toml", quick_target / "target", tmp_path / "bad",
                       {"kind": "bigram", "options": {"prompts": 0}})
    code, _, err = run_cli(capsys, "drafter", "train", str(bad))
    assert code == 2 and err.count("\n") == 1 and "prompts" in err
    typo = write_config(tmp_path / "typo.toml", quick_target / "target", tmp_path / "typo", {"kind": "bigramm"})
    code, _, err = run_cli(capsys, "drafter", "train", str(typo))
    assert code == 2 and err.count("\n") == 1 and "allowed: bigram, bigram_table, eagle3, standalone" in err


def test_a_kind_of_its_own_trains_in_the_core_loop(quick_target, tmp_path, capsys):
    """``bigram_table`` gives ``DrafterKind.stages`` (models, rollout, student forward, save):
    ``opdplug drafter train`` runs the core loop with them, and the loop's own machinery does the
    rest: the local target scores, ``[loss]`` (TVD) is the loss, ``[run]`` the optimizer, with
    checkpoints and metrics. Then eval and export, as for any kind."""
    drafter = {"kind": "bigram_table", "draft_tokens": 3, "eval_prompts": 3, "eval_batch_size": 3,
               "options": {"max_new_tokens": 12}}
    config = write_config(tmp_path / "table.toml", quick_target / "target", tmp_path / "table", drafter)
    data = tomllib.loads(config.read_text())
    data["run"].update(steps=6, batch_size=8, lr=0.3, checkpoint_every=3)
    data["loss"] = {"support": "full", "divergence": "tvd"}
    config.write_text(dump_toml(data))
    code, out, err = run_cli(capsys, "drafter", "train", str(config), "--json")
    assert code == 0, err
    run = Path(out["output_dir"])
    assert out["kind"] == "bigram_table" and out["steps"] == 6 and all(0 < loss < 1 for loss in out["losses"])
    from safetensors.torch import load_file

    assert float(load_file(str(run / "final" / "bigram_table.safetensors"))["logits_V_V"].abs().max()) > 0.1  # from zeros
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000006"  # the core loop's checkpoints
    assert (run / "final" / "bigram_table.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The token plugin's [loss] computed it (its diagnostics are logged), the local target scored.
    assert [r["step"] for r in rows] == list(range(6)) and all({"reverse_kl", "teacher_entropy"} <= set(r) for r in rows)
    code, ev, err = run_cli(capsys, "drafter", "eval", str(run), "--json", "--prompts", "3", "--no-timing",
                            "--batch-sizes", "3", "--k", "2")
    assert code == 0, err
    assert ev["kind"] == "bigram_table" and ev["reports"][0]["identical_to_target"] is True
    code, ex, err = run_cli(capsys, "drafter", "export", str(run), str(tmp_path / "table_out"), "--json")
    assert code == 0, err
    assert ex["kind"] == "bigram_table" and (tmp_path / "table_out" / "bigram_table.safetensors").is_file()
