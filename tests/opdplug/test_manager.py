"""The plugin manager and registry: entry points, env switches, broken plugins, misspelt hooks,
clashes, defaults, and registry kinds that plugins add through ``opd_addhooks``."""
import types
from dataclasses import dataclass

import pytest

import toy_plugin
from opdplug.errors import ConfigError, PluginError
from opdplug.hookspecs import hookimpl, hookspec, registry_kind
from opdplug.manager import ENV_DISABLE_AUTOLOAD, ENV_ONLY, make_plugin_manager
from opdplug.prepare import validate

FAKE_A = "from opdplug.hookspecs import hookimpl\n\n@hookimpl\ndef opd_register_samplers(register):\n    register('a_sampler', object())\n"
FAKE_B = "from opdplug.hookspecs import hookimpl\n\n@hookimpl\ndef opd_register_scorers(register):\n    register('b_scorer', object())\n"


def plugin(name: str, **hooks):
    """A plugin module ``name`` whose hooks are ``hooks`` (functions, marked here)."""
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))
    return module


@pytest.fixture
def two_fakes(site):
    site.install("opdplug-fake-a", {"fake_a": "fake_a"}, modules={"fake_a": FAKE_A})
    site.install("opdplug-fake-b", {"fake_b": "fake_b"}, version="1.2", modules={"fake_b": FAKE_B})
    return site


def test_entry_points_load_with_their_distribution(two_fakes, monkeypatch):
    monkeypatch.setenv(ENV_ONLY, "fake_a,fake_b")
    manager = make_plugin_manager()
    assert set(manager.infos) == {"opdplug", "fake_a", "fake_b"}
    a, b = manager.infos["fake_a"], manager.infos["fake_b"]
    assert (a.distribution, a.version, a.hooks) == ("opdplug-fake-a", "0.3", ["opd_register_samplers"])
    assert (b.distribution, b.version) == ("opdplug-fake-b", "1.2")
    assert manager.registry.owners["samplers"]["a_sampler"] == "fake_a"
    assert a.provides == {"samplers": ["a_sampler"]} and b.provides == {"scorers": ["b_scorer"]}
    assert manager.versions()["fake_b"] == "opdplug-fake-b==1.2"


def test_env_switches(two_fakes, monkeypatch):
    assert {"opdplug", "fake_a", "fake_b"} <= set(make_plugin_manager().infos)  # every entry point
    monkeypatch.setenv(ENV_DISABLE_AUTOLOAD, "1")
    assert set(make_plugin_manager().infos) == {"opdplug"}
    assert set(make_plugin_manager([toy_plugin]).infos) == {"opdplug", "toy_plugin"}
    monkeypatch.delenv(ENV_DISABLE_AUTOLOAD)
    monkeypatch.setenv(ENV_ONLY, "fake_b")
    assert set(make_plugin_manager().infos) == {"opdplug", "fake_b"}
    assert set(make_plugin_manager(autoload=False).infos) == {"opdplug"}


def test_misspelt_name_in_OPDPLUG_PLUGINS_is_one_line(two_fakes, monkeypatch):
    monkeypatch.setenv(ENV_ONLY, "fake_a, fake_c")
    with pytest.raises(PluginError) as err:
        make_plugin_manager()
    msg = str(err.value)
    assert msg.startswith("OPDPLUG_PLUGINS names 'fake_c', which no installed plugin is called; installed: ")
    assert "fake_a, fake_b" in msg and "\n" not in msg


def test_broken_plugin_is_reported_not_fatal(toy_entry_points, monkeypatch):
    toy_entry_points.install("opdplug-fake-broken", {"broken": "fake_broken"},
                             modules={"fake_broken": "import does_not_exist_anywhere\n"})
    monkeypatch.setenv(ENV_ONLY, "broken,toy,toy_backend")
    manager = make_plugin_manager()
    assert manager.infos["broken"].error == "ModuleNotFoundError: No module named 'does_not_exist_anywhere'"
    assert manager.registry.names("samplers") == ["reference", "sample"]  # the rest works
    assert "broken" not in manager.versions()
    with pytest.raises(ConfigError) as err:
        manager.registry.get("samplers", "fancy", "rollout.sampler")
    assert str(err.value).startswith(
        "rollout.sampler = 'fancy': unknown sampler 'fancy'; allowed: reference, sample; "
        "note: plugin 'broken' failed to load (ModuleNotFoundError: No module named 'does_not_exist_anywhere')")
    # What OPDPLUG_PLUGINS left out is named too (whatever else this environment has installed).
    skipped = str(err.value).split("; installed but not loaded (OPDPLUG_PLUGINS): ")
    assert len(skipped) == 2 and "broken" not in skipped[1] and "toy" not in skipped[1].split(", ")


def test_misspelt_hook_fails_loudly(toy_manager):
    typo = plugin("typo_plugin", opd_register_sampler=lambda register: None)  # missing "s"
    with pytest.raises(PluginError, match="plugin 'typo_plugin': unknown hook 'opd_register_sampler'"):
        toy_manager(typo)


def test_name_clash_names_both_plugins(toy_manager):
    manager = toy_manager(plugin("clash_plugin", opd_register_samplers=lambda register: register("sample", object)))
    with pytest.raises(PluginError, match="sampler 'sample' is registered by both 'toy_plugin' and 'clash_plugin'"):
        manager.registry


def test_stage_override_by_plugin_wins_over_builtin(toy_manager):
    sentinel = object()
    manager = toy_manager(plugin("override_plugin", opd_score=lambda ctx, batch: sentinel))
    assert manager.hook.opd_score(ctx=types.SimpleNamespace(scratch={}), batch=None) is sentinel


# ----------------------------------------------------------------------------- defaults
def test_an_empty_name_means_the_kind_default(toy_manager, toy_run):
    registry = toy_manager().registry
    assert registry.defaults == {"tasks": "count", "samplers": "sample", "scorers": "bigram", "credit_schemes": "uniform"}
    assert registry.resolve("samplers", "") == "sample" and registry.resolve("samplers", "reference") == "reference"
    assert registry.get("samplers", "", "rollout.sampler") is toy_plugin.SampleFromStudent
    config, manager = toy_run()
    resolved = validate(config, manager).config  # what the run directory records
    assert (resolved.rollout.sampler, resolved.teacher.scorer, resolved.credit.scheme, resolved.task.name) == (
        "sample", "bigram", "uniform", "count")


def test_two_defaults_of_one_kind_are_one_line(toy_manager):
    second = plugin("second_default", opd_register_samplers=lambda register: register("other", object, default=True))
    with pytest.raises(PluginError) as err:
        toy_manager(second).registry
    assert str(err.value) == ("plugins 'toy_plugin' and 'second_default' both register the default sampler; disable one "
                              "(OPDPLUG_PLUGINS selects which entry points load)")


def test_an_empty_name_without_a_default_is_one_line(toy_manager, toy_run):
    with pytest.raises(ConfigError) as err:
        toy_manager().registry.resolve("verifiers", "", "credit.verifier")
    assert str(err.value) == ("credit.verifier is not set and no loaded plugin provides a default verifier; "
                              "choose one (exact)")
    import toy_backend

    config, manager = toy_run(make_plugin_manager([toy_backend], autoload=False))  # nobody registers samplers
    with pytest.raises(ConfigError) as err:
        validate(config, manager)
    assert str(err.value) == ("rollout.sampler is not set and no loaded plugin provides a default sampler; choose one "
                              "(none registered: is the plugin that provides samplers installed and enabled?)")


# ----------------------------------------------------------------------------- plugin kinds
@hookspec
@registry_kind("gizmo widget")
def opd_register_widgets(register):
    """Widgets, a registry kind of a test plugin."""


widget_specs = types.ModuleType("widget_specs")
widget_specs.opd_register_widgets = opd_register_widgets


@dataclass(frozen=True)
class Round:
    radius: float = 1.0


def test_opd_addhooks_adds_a_registry_kind(toy_manager):
    declares = plugin("widget_plugin", opd_addhooks=lambda pluginmanager: pluginmanager.add_hookspecs(widget_specs),
                      opd_register_widgets=lambda register: register("round", Round, default=True))
    other = plugin("hex_plugin", opd_register_widgets=lambda register: register("hex", object()))
    for order in ((declares, other), (other, declares)):  # the spec may arrive after an implementation
        manager = toy_manager(*order)
        registry = manager.registry
        assert "widgets" in registry.kinds and registry.names("widgets") == ["hex", "round"]
        assert registry.build("widgets", "", {"radius": 2}, "x.widget") == Round(radius=2.0)
        with pytest.raises(ConfigError, match=r"^x.widget = 'square': unknown gizmo widget 'square'; allowed: hex, round$"):
            registry.get("widgets", "square", "x.widget")
        assert manager.infos["hex_plugin"].provides == {"widgets": ["hex"]}
    assert "widgets" not in toy_manager().registry.kinds  # a kind nobody declared does not exist
    with pytest.raises(PluginError, match="plugin 'hex_plugin': unknown hook 'opd_register_widgets'"):
        toy_manager(other)
