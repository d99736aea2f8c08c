"""The example third-party plugin, loaded through its real entry point (the test environment
installs it): its divergence chosen by name, its component lifecycle (``setup``/``metrics``) and
the registry kind it adds with ``opd_addhooks``."""
import json

import pytest

from opdplug.cli import main
from opdplug.config import parse_config
from opdplug.errors import ConfigError
from opdplug.loop import train
from opdplug.manager import make_plugin_manager


@pytest.fixture
def example_run(tmp_path, tiny_models):
    """``example_run(**loss) -> (config, manager)``: a 2-step run on the tiny models with the
    Jeffreys divergence, every installed plugin loaded through its entry point."""

    def make(**loss):
        manager = make_plugin_manager()
        data = {
            "run": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "progress": False},
            "student": {"path": str(tiny_models.student_dir)},
            "teacher": {"path": str(tiny_models.teacher_dir)},
            "task": {"options": {"max_len": 4}},
            "loss": {"divergence": "jeffreys", **loss},
        }
        return parse_config(data, manager.plugin_tables()), manager

    return make


def test_loaded_through_its_entry_point_with_its_own_registry_kind():
    manager = make_plugin_manager()
    info = manager.infos["example"]
    assert (info.distribution, info.version) == ("opdplug-example-divergence", "0.0.1")
    assert info.hooks == ["opd_addhooks", "opd_register_divergences", "opd_register_jeffreys_balances"]
    registry = manager.registry
    assert registry.owners["divergences"]["jeffreys"] == "example"
    assert "jeffreys_balances" in registry.kinds and registry.defaults["jeffreys_balances"] == "even"
    assert info.provides == {"divergences": ["jeffreys"], "jeffreys_balances": ["even", "mode_seeking"]}


def test_plugins_command_lists_it(capsys):
    assert main(["plugins", "--json"]) == 0
    example = {p["name"]: p for p in json.loads(capsys.readouterr().out)}["example"]
    assert example["distribution"] == "opdplug-example-divergence" and example["version"] == "0.0.1"
    assert example["provides"] == {"divergences": ["jeffreys"], "jeffreys_balances": ["even", "mode_seeking"]}
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "example  (opdplug-example-divergence 0.0.1)" in out and "jeffreys_balances: even, mode_seeking" in out


@pytest.mark.parametrize("balance, forward, reverse", [("", 1.0, 1.0), ("mode_seeking", 0.5, 1.5)])
def test_divergence_chosen_by_name_with_a_balance_of_its_kind(example_run, balance, forward, reverse):
    config, manager = example_run(divergence_options={"scale": 0.5, "balance": balance})
    history = train(config, manager).history
    # metrics() of the component, merged into every step's metrics: the balance setup() resolved
    assert [(m["jeffreys/forward_weight"], m["jeffreys/reverse_weight"]) for m in history] == [(forward, reverse)] * 2
    # the reported per-token loss is the plugin's divergence on the full vocabulary
    m = history[-1]
    assert m["loss"] > 0
    assert m["loss"] == pytest.approx(0.5 * (forward * m["forward_kl"] + reverse * m["reverse_kl"]), rel=1e-4)


def test_an_unknown_balance_is_one_line_before_any_step(example_run, tmp_path):
    config, manager = example_run(divergence_options={"balance": "evn"})
    with pytest.raises(ConfigError) as err:
        train(config, manager)
    assert str(err.value) == ("loss.divergence_options.balance = 'evn': unknown Jeffreys balance 'evn'; "
                              "allowed: even, mode_seeking")
    assert not (tmp_path / "run").exists()
