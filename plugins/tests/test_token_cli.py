"""The command line with the first-party plugins: what they list, their one-line config errors
with nothing written, the tokenizer check and self-test, eval of a run. The kernel's own CLI
tests (on a toy plugin) are in tests/opdplug/test_cli.py."""
import json

import pytest

from opdplug.cli import main
from opdplug.manager import ENV_ONLY, make_plugin_manager
from opdplug_local import tiny
from opdplug_local.tasks import SumChain


def write_config(path, text):
    path.write_text(text)
    return str(path)


def base_toml(tmp_path, tiny_models, teacher, extra=""):
    return f"""
[run]
output_dir = "{tmp_path / 'out'}"
steps = 2
batch_size = 4
progress = false
[student]
path = "{tiny_models.student_dir}"
[teacher]
path = "{teacher}"
[task.options]
max_len = 3
{extra}
"""


def test_plugins_json_lists_the_first_party_plugins(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert {"opdplug", "local", "token"} <= set(listing)
    token = listing["token"]
    assert token["distribution"] == "opdplug-token" and token["version"] == "0.1.0"
    assert "reverse_kl" in token["provides"]["divergences"]
    assert "on_policy" in token["provides"]["samplers"]
    assert "train" in listing["opdplug"]["provides"]["commands"]


def test_plugins_table(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "token  (opdplug-token 0.1.0)" in out and "divergences: " in out


def test_token_loads_through_its_entry_point():
    manager = make_plugin_manager()
    infos = manager.infos
    assert infos["opdplug"].distribution == "opdplug"
    assert infos["token"].distribution == "opdplug-token" and infos["token"].version == "0.1.0"
    assert "reverse_kl" in manager.registry.names("divergences")
    assert manager.registry.owners["divergences"]["reverse_kl"] == "token"


def test_only_the_named_plugins_load(monkeypatch):
    monkeypatch.setenv(ENV_ONLY, "token")
    assert set(make_plugin_manager().infos) == {"opdplug", "token"}


@pytest.mark.parametrize(
    "extra, message",
    [
        ('[loss]\ndivergence = "revrse_kl"', "loss.divergence = 'revrse_kl': unknown divergence 'revrse_kl'; allowed: akl, alpha,"),
        ("[loss]\ntop_k = \"many\"", "loss.top_k must be an integer, got str 'many'"),
        ("[loss]\nbogus = 1", "[loss] has unknown key 'bogus'"),
        ('[loss]\ndivergence = "jsd"\n[loss.divergence_options]\nbeta = "half"', "beta must be a number"),
        ("[token.filter]\nenabeld = true", "[token.filter] has unknown key 'enabeld'"),
        ('[rollout]\nsampler = "lambda_mix"\n[rollout.options]\nlmbda = 2.0', "lmbda must be in [0, 1]"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, tiny_models, capsys, extra, message):
    cfg = write_config(tmp_path / "c.toml", base_toml(tmp_path, tiny_models, tiny_models.teacher_dir, extra))
    assert main(["train", cfg]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("opdplug: error: ")
    assert not (tmp_path / "out").exists()


def test_mismatched_tokenizers_fail_before_training(tmp_path, tiny_models, capsys):
    other_tok = tiny.build_tokenizer(SumChain().words() + ["extra"])
    other = tmp_path / "other_teacher"
    tiny.save_pretrained_pair(tiny.build_model("tiny", other_tok, seed=3), other_tok, other)
    cfg = write_config(tmp_path / "c.toml", base_toml(tmp_path, tiny_models, other))
    assert main(["train", cfg]) == 2
    err = capsys.readouterr().err
    assert "teacher and student tokenizers differ (0 tokens only in the student's, 1 only in the teacher's" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_check_reports_self_loss_near_zero(tmp_path, tiny_models, capsys):
    cfg = write_config(tmp_path / "c.toml", base_toml(tmp_path, tiny_models, tiny_models.teacher_dir, '[loss]\ndivergence = "jsd"'))
    assert main(["check", cfg]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokenizers"] == "identical" and abs(report["self_loss_per_token"]) < 1e-5


def test_train_then_eval_run_dir_and_checkpoint(tmp_path, tiny_models, capsys):
    cfg = write_config(tmp_path / "c.toml", base_toml(tmp_path, tiny_models, tiny_models.teacher_dir))
    assert main(["train", cfg]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "out"), "--lengths", "1,2", "-n", "10", "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)["accuracy"]
    ckpt = tmp_path / "out" / "checkpoints" / "step-000002"
    assert main(["eval", str(ckpt), "--lengths", "1,2", "-n", "10", "--json"]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)["accuracy"]
    assert set(from_run) == {"1", "2"} and from_run == from_ckpt
    # the resolved config and plugin versions travel with the checkpoint
    assert "[loss]" in (ckpt / "config.toml").read_text()
    assert json.loads((ckpt / "state.json").read_text())["versions"]["token"] == "opdplug-token==0.1.0"


def test_eval_of_nonsense_path(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "neither a model directory nor a finished run directory" in capsys.readouterr().err
