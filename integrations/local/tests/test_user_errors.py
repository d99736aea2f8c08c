"""What a user trips over, each a one-line error (or one line saying what happens), a non-zero
exit, and nothing half-written."""
from __future__ import annotations

import json

import pytest

from opdplug.cli import main
from opdplug.config import dump_toml


def config_file(tmp_path, tiny_models, name="c.toml", **sections):
    data = {
        "run": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "progress": False},
        "student": {"path": str(tiny_models.student_dir)},
        "teacher": {"path": str(tiny_models.teacher_dir)},
        "task": {"options": {"max_len": 3}},
    }
    for table, values in sections.items():
        data.setdefault(table, {}).update(values)
    path = tmp_path / name
    path.write_text(dump_toml(data))
    return path


def fails_in_one_line(capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    return err


@pytest.mark.parametrize("section, fragment", [
    ({"run": {"lr": -1}}, "run.lr must be greater than 0, got -1"),
    ({"run": {"keep_checkpoints": 0}}, "run.keep_checkpoints must be at least 1"),
    ({"rollout": {"temperature": 0}}, "rollout.temperature must be greater than 0, got 0"),
    ({"rollout": {"top_p": 1.5}}, "rollout.top_p must be in (0, 1]"),
])
def test_bad_numbers_are_named_by_check_and_train(tmp_path, tiny_models, capsys, section, fragment):
    path = config_file(tmp_path, tiny_models, **section)
    for command in ("check", "train"):
        fails_in_one_line(capsys, [command, str(path)], fragment)
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file(tmp_path, tiny_models, capsys):
    (tmp_path / "run").write_text("not a directory")
    path = config_file(tmp_path, tiny_models)
    for command in ("check", "train"):
        fails_in_one_line(capsys, [command, str(path)], "is a file, not a directory")
    assert (tmp_path / "run").read_text() == "not a directory"


def test_steps_zero_on_the_command_line_is_not_ignored(tmp_path, tiny_models, capsys):
    fails_in_one_line(capsys, ["train", str(config_file(tmp_path, tiny_models)), "--steps", "0"], "run.steps must be at least 1, got 0")


def test_eval_lengths_outside_the_task(tmp_path, tiny_models, capsys):
    fails_in_one_line(capsys, ["eval", str(tiny_models.student_dir), "--lengths", "99"], "--lengths 99: length must be in 1..")


def test_a_failed_runs_log_is_not_continued(tmp_path, tiny_models, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0, "loss": 99.0}\n{"step": 1, "loss": 98.0}\n')
    assert main(["train", str(config_file(tmp_path, tiny_models))]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(r["loss"] < 90 for r in rows)


def test_resuming_with_a_changed_config_says_so(tmp_path, tiny_models, capsys):
    first = config_file(tmp_path, tiny_models, run={"steps": 4, "stop_after": 2, "checkpoint_every": 1})
    assert main(["train", str(first)]) == 0
    capsys.readouterr()
    changed = config_file(tmp_path, tiny_models, name="d.toml", run={"steps": 4, "checkpoint_every": 1},
                          rollout={"temperature": 0.7})
    assert main(["train", str(changed)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("opdplug:")]
    assert len(notes) == 1 and "at step 2 with a changed config" in notes[0] and "rollout.temperature 1.0 -> 0.7" in notes[0]
    assert "run.steps" not in notes[0] and "run.stop_after" not in notes[0]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]


def test_a_model_directory_without_a_tokenizer(tmp_path, tiny_models, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models.student_dir, broken)
    for f in broken.glob("tokenizer*"):
        f.unlink()
    path = config_file(tmp_path, tiny_models, student={"path": str(broken)})
    fails_in_one_line(capsys, ["check", str(path)], "could not be loaded")


def test_only_token_and_local_run_a_config_and_without_the_backend_one_line(tmp_path, tiny_models, capsys, monkeypatch):
    path = config_file(tmp_path, tiny_models, teacher={"scorer": "local"})
    monkeypatch.setenv("OPDPLUG_PLUGINS", "token,local")
    assert main(["train", str(path)]) == 0
    monkeypatch.setenv("OPDPLUG_PLUGINS", "token")
    err = fails_in_one_line(capsys, ["train", str(path), "--output-dir", str(tmp_path / "other")],
                            "task.name is not set and no loaded plugin provides a default task")
    assert "installed but not loaded (OPDPLUG_PLUGINS)" in err and "local" in err.split("installed but not loaded")[1]
    assert not (tmp_path / "other").exists()
