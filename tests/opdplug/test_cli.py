"""The command line on the toy plugin, installed as a distribution: plugin listing, one-line
errors with nothing written, check, train."""
import json

import pytest

from opdplug.cli import main
from opdplug.manager import ENV_ONLY


def write_config(tmp_path, extra: str = "") -> str:
    """A toy run's config; ``extra`` is appended (keys before its first table land in [run])."""
    path = tmp_path / "c.toml"
    path.write_text(f"""
[run]
output_dir = "{tmp_path / 'out'}"
progress = false
device = "cpu"
{extra}
""")
    return str(path)


def test_plugins_json_lists_every_plugin(toy_entry_points, capsys):
    assert main(["plugins", "--json"]) == 0
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert set(listing) == {"opdplug", "toy", "toy_backend"}
    toy = listing["toy"]
    assert toy["distribution"] == "opdplug-toy" and toy["version"] == "0.3" and "error" not in toy
    assert "opd_loss" in toy["hooks"] and "opd_register_samplers" in toy["hooks"]
    assert toy["provides"] == {"tasks": ["count"], "samplers": ["sample", "reference"], "scorers": ["bigram"],
                               "credit_schemes": ["uniform"], "verifiers": ["exact"]}
    assert listing["toy_backend"]["hooks"] == ["opd_load_models", "opd_save_model", "opd_student_forward"]
    assert sorted(listing["opdplug"]["provides"]["commands"]) == ["check", "plugins", "train"]


def test_plugins_table_shows_failures(toy_entry_points, monkeypatch, capsys):
    toy_entry_points.install("opdplug-fake-broken", {"broken": "fake_broken"}, modules={"fake_broken": "1 / 0\n"})
    monkeypatch.setenv(ENV_ONLY, "toy,toy_backend,broken")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "toy  (opdplug-toy 0.3)" in out and "    samplers: reference, sample" in out
    assert "broken  (opdplug-fake-broken 0.3)\n    FAILED TO LOAD: ZeroDivisionError: division by zero" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        ('[rollout]\nsampler = "smaple"', "rollout.sampler = 'smaple': unknown sampler 'smaple'; allowed: reference, sample"),
        ('[credit]\nverifier = "exakt"', "credit.verifier = 'exakt': unknown verifier 'exakt'; allowed: exact"),
        ('steps = "many"', "run.steps must be an integer, got str 'many'"),
        ("batch_size = 0", "run.batch_size must be at least 1, got 0"),
        ("[loss]\ntop_k = 1", "unknown table [loss]; allowed tables: credit, rollout, run, student, task, teacher, toy"),
        ("[toy]\nhiden = 4", "[toy] has unknown key 'hiden'; allowed keys: hidden, teacher_seed"),
        ("[rollout.options]\nwidth = 2", "has unknown key 'width'; allowed keys: (none: this component takes no options)"),
        ("[task.options]\nprompt_len = 0", "task 'count': prompt_len must be at least 1"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(toy_entry_points, tmp_path, capsys, extra, message):
    assert main(["train", write_config(tmp_path, extra)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("opdplug: error: ")
    assert not (tmp_path / "out").exists()


def test_missing_backend_and_missing_file_are_one_line(toy_entry_points, monkeypatch, tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert capsys.readouterr().err == f"opdplug: error: config file {str(tmp_path / 'nope.toml')!r} does not exist\n"
    monkeypatch.setenv(ENV_ONLY, "toy")  # no backend
    assert main(["train", write_config(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no loaded plugin loads models (hook opd_load_models)" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_check_runs_every_preflight(toy_entry_points, tmp_path, capsys):
    assert main(["check", write_config(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"config": "ok", "toy_vocab": 13}
    assert not (tmp_path / "out").exists()


def test_train_prints_a_summary_and_checkpoints_record_config_and_versions(toy_entry_points, tmp_path, capsys):
    cfg = write_config(tmp_path, "steps = 2\nbatch_size = 4\n[toy]\nhidden = 4")
    assert main(["train", cfg, "--steps", "3", "--output-dir", str(tmp_path / "elsewhere")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["processes"] == 1 and summary["output_dir"] == str(tmp_path / "elsewhere")
    assert summary["final_model"] == str(tmp_path / "elsewhere" / "final") and summary["last_loss"] > 0
    ckpt = tmp_path / "elsewhere" / "checkpoints" / "step-000003"
    assert "[toy]\nhidden = 4" in (ckpt / "config.toml").read_text()
    assert json.loads((ckpt / "state.json").read_text())["versions"] == {
        "opdplug": "opdplug==0.1.0", "toy": "opdplug-toy==0.3", "toy_backend": "opdplug-toy==0.3"}
    assert not (tmp_path / "out").exists()


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``opdplug plugins | head -1``: the pipe is closed under the writer; no traceback, exit 141."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already left when the first line is written
    proc = subprocess.run([sys.executable, "-m", "opdplug.cli", "plugins"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
