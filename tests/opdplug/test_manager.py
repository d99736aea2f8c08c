"""The plugin manager: entry points, env switches, broken plugins, misspelt hooks, clashes."""
import sys
import types

import pytest

from opdplug.errors import ConfigError, PluginError
from opdplug.hookspecs import hookimpl
from opdplug.manager import ENV_DISABLE_AUTOLOAD, ENV_ONLY, make_plugin_manager


def _fake_distribution(tmp_path, name, module_source, ep_name):
    """A distribution importlib.metadata discovers on sys.path, with an opdplug entry point."""
    dist = tmp_path / f"{name}-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(f"[opdplug]\n{ep_name} = {name.replace('-', '_')}\n")
    (tmp_path / f"{name.replace('-', '_')}.py").write_text(module_source)


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[mod]


def test_first_party_and_third_party_load_through_entry_points():
    manager = make_plugin_manager()
    infos = manager.infos
    assert infos["opdplug"].distribution == "opdplug"
    assert infos["token"].distribution == "opdplug-token" and infos["token"].version == "0.1.0"
    assert infos["example"].distribution == "opdplug-example-divergence"
    reg = manager.registry
    assert "reverse_kl" in reg.names("divergences") and "jeffreys" in reg.names("divergences")
    assert reg.owners["divergences"]["jeffreys"] == "example"
    assert "jeffreys" in manager.infos["example"].provides["divergences"]


def test_env_switches(monkeypatch):
    monkeypatch.setenv(ENV_DISABLE_AUTOLOAD, "1")
    assert set(make_plugin_manager().infos) == {"opdplug"}
    monkeypatch.delenv(ENV_DISABLE_AUTOLOAD)
    monkeypatch.setenv(ENV_ONLY, "token")
    assert set(make_plugin_manager().infos) == {"opdplug", "token"}


def test_broken_plugin_is_reported_not_fatal(on_path):
    _fake_distribution(on_path, "fake-broken", "import does_not_exist_anywhere\n", "broken")
    manager = make_plugin_manager()
    assert "ModuleNotFoundError" in manager.infos["broken"].error
    assert "reverse_kl" in manager.registry.names("divergences")  # the rest works
    with pytest.raises(ConfigError) as err:
        manager.registry.get("divergences", "fancy", "loss.divergence")
    msg = str(err.value)
    assert "loss.divergence = 'fancy': unknown divergence 'fancy'; allowed:" in msg
    assert "plugin 'broken' failed to load (ModuleNotFoundError" in msg


def test_misspelt_hook_fails_loudly():
    plugin = types.ModuleType("typo_plugin")

    @hookimpl
    def opd_register_divergence(register):  # missing "s"
        pass

    plugin.opd_register_divergence = opd_register_divergence
    with pytest.raises(PluginError, match="typo_plugin"):
        make_plugin_manager([plugin])


def test_name_clash_names_both_plugins():
    plugin = types.ModuleType("clash_plugin")

    @hookimpl
    def opd_register_divergences(register):
        register("reverse_kl", object)

    plugin.opd_register_divergences = opd_register_divergences
    manager = make_plugin_manager([plugin])
    with pytest.raises(PluginError, match="divergence 'reverse_kl' is registered by both 'token' and 'clash_plugin'"):
        manager.registry


def test_stage_override_by_plugin_wins_over_builtin():
    plugin = types.ModuleType("override_plugin")
    sentinel = object()

    @hookimpl
    def opd_score(ctx, batch):
        return sentinel

    plugin.opd_score = opd_score
    manager = make_plugin_manager([plugin])
    assert manager.hook.opd_score(ctx=types.SimpleNamespace(scratch={}), batch=None) is sentinel
