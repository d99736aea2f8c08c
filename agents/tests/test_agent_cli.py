"""``opdplug agent train|eval|teacher`` through the real ``opdplug`` command line (entry-point
plugin discovery included): tables, JSON, PNGs, and one-line errors with non-zero exits."""
from __future__ import annotations

import json

import pytest

from opdplug_local import tiny
from opdplug.cli import main
from opdplug_local.tasks import SumChain
from opdplug_agents.task import AgentTask


@pytest.fixture(scope="module")
def agent_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("agent_model")
    tok = tiny.build_tokenizer(AgentTask.words())
    tiny.save_pretrained_pair(tiny.build_model("tiny", tok, seed=3), tok, path)
    return path


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_agent_command_is_registered_by_the_plugin(opd_manager):
    manager = opd_manager()
    assert "agent" in manager.registry.components["commands"]
    assert manager.registry.owners["commands"]["agent"] == "agents"


def test_eval_the_expert_as_json(capsys):
    rc, out, _ = run(["agent", "eval", "expert", "--env", "swapsort", "--horizons", "1,3", "--n", "3", "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    assert {h: v["success"] for h, v in data["horizons"].items()} == {"1": 1.0, "3": 1.0}
    assert data["png"] is None and data["env"] == "swapsort"


def test_eval_a_model_prints_a_table_and_writes_a_png(agent_model_dir, tmp_path, capsys):
    png = tmp_path / "plots" / "s.png"
    rc, out, _ = run(["agent", "eval", str(agent_model_dir), "--env", "gridnav", "--horizons", "1,2", "--n", "2",
                      "--png", str(png)], capsys)
    assert rc == 0 and "horizon" in out and "success" in out and f"wrote {png}" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,message", [
    (["agent", "eval", "/no/such/model", "--env", "gridnav"], "neither a model directory"),
    (["agent", "eval", "expert", "--env", "gridnva"], "--env = 'gridnva': unknown environment 'gridnva'; allowed: calc_lookup"),
    (["agent", "eval", "expert", "--horizons", "2,x"], "comma-separated integers"),
    (["agent", "eval", "expert", "--env", "calc_lookup", "--horizons", "40"], "must be in 1..11"),
    (["agent", "eval", "expert", "--n", "0"], "--n must be at least 1"),
    (["agent", "eval", "expert", "--env-options", "[1]"], "JSON object"),
    (["agent", "teacher", "--env", "nowhere"], "no built-in teacher recipe"),
])
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys):
    rc, _, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("opdplug: error:")]
    assert rc != 0 and len(lines) == 1 and message in lines[0]


def test_eval_a_model_without_the_agent_vocabulary_is_an_error(tmp_path, capsys):
    tok = tiny.build_tokenizer(SumChain().words())
    tiny.save_pretrained_pair(tiny.build_model("tiny", tok, seed=0), tok, tmp_path / "m")
    rc, _, err = run(["agent", "eval", str(tmp_path / "m"), "--env", "gridnav", "--n", "1", "--png", ""], capsys)
    assert rc != 0 and "opdplug: error: agent eval:" in err and "lacks" in err


def _write_config(path, out_dir, task_name="agent"):
    task = ('[task]\nname = "agent"\n[task.options]\nenv = "calc_lookup"\nmin_horizon = 1\nmax_horizon = 2\n'
            if task_name == "agent" else '[task]\nname = "sumchain"\n')
    path.write_text(
        f'[run]\noutput_dir = "{out_dir}"\nsteps = 1\nbatch_size = 2\nresume = false\nthreads = 1\n'
        '[student]\ntiny = "tiny"\n[teacher]\nscorer = "none"\n' + task +
        '[rollout]\nsampler = "agent_expert"\n[loss]\nsupport = "sampled"\nestimator = "nll"\n'
    )
    return path


def test_agent_train_trains_then_reports_success_by_horizon(tmp_path, capsys):
    config = _write_config(tmp_path / "c.toml", tmp_path / "run")
    rc, out, _ = run(["agent", "train", str(config), "--horizons", "1,2", "--n", "2", "--json"], capsys)
    assert rc == 0
    data = json.loads(out.strip().splitlines()[-1])
    assert data["steps"] == 1 and set(data["success"]) == {"1", "2"}
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "success_by_horizon.json").read_text())["env"] == "calc_lookup"
    # eval of the run directory: the environment comes from its config.toml
    rc, out, _ = run(["agent", "eval", str(tmp_path / "run"), "--horizons", "1", "--n", "1", "--json", "--png", ""], capsys)
    assert rc == 0 and json.loads(out)["env"] == "calc_lookup"


def test_agent_train_refuses_a_non_agent_config(tmp_path, capsys):
    config = _write_config(tmp_path / "c.toml", tmp_path / "run", task_name="sumchain")
    rc, _, err = run(["agent", "train", str(config)], capsys)
    assert rc != 0 and "needs \"agent\"" in err and not (tmp_path / "run").exists()


def test_agent_teacher_quick_builds_caches_and_copies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    rc, out, _ = run(["agent", "teacher", "--env", "gridnav", "--quick", "--output-dir", str(tmp_path / "agents"), "--json"], capsys)
    assert rc == 0
    data = json.loads(out.strip().splitlines()[-1])
    assert (tmp_path / "agents" / data["env"] / "teacher" / "config.json").is_file()
    assert data["cached"].startswith(str(tmp_path / "cache")) and set(data["success"]) == {"1", "2"}
