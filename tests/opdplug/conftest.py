"""The kernel's tests run on the toy plugin (``toy_plugin``, ``toy_backend``), never on a
first-party plugin: managers are built with ``autoload=False``, or load only entry points the
tests install themselves (``site``)."""
from __future__ import annotations

import sys

import pytest

import toy_backend
import toy_plugin
from opdplug.config import parse_config
from opdplug.manager import ENV_DISABLE_AUTOLOAD, ENV_ONLY, make_plugin_manager


def make_toy_manager(*plugins, backend: bool = True):
    return make_plugin_manager([toy_plugin, *([toy_backend] if backend else []), *plugins], autoload=False)


@pytest.fixture
def toy_manager():
    """``toy_manager(*plugins, backend=True)``: a manager with the kernel, the toy plugin (and its
    backend unless ``backend=False``) and ``plugins``; no entry point is loaded."""
    return make_toy_manager


@pytest.fixture
def toy_run(tmp_path):
    """``toy_run(manager=None, **sections) -> (config, manager)``: a validated 2-step toy run."""

    def make(manager=None, **sections):
        manager = manager or make_toy_manager()
        data = {"run": {"output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 4, "progress": False,
                        "device": "cpu"}}
        for name, table in sections.items():
            data.setdefault(name, {}).update(table)
        return parse_config(data, manager.plugin_tables()), manager

    return make


class Site:
    """A directory on ``sys.path`` where tests install distributions that ``importlib.metadata``
    finds, with ``opdplug`` entry points."""

    def __init__(self, path):
        self.path = path

    def install(self, name: str, entry_points: dict[str, str], *, version: str = "0.3", modules: dict | None = None):
        """Distribution ``name`` with entry points ``{ep_name: "module[:object]"}`` and the
        modules ``{module_name: source}``."""
        dist = self.path / f"{name.replace('-', '_')}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (dist / "entry_points.txt").write_text("[opdplug]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        for module, source in (modules or {}).items():
            (self.path / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A ``Site`` on sys.path; entry points autoload again even under
    ``OPDPLUG_DISABLE_PLUGIN_AUTOLOAD=1``, and ``OPDPLUG_PLUGINS`` is unset: set it to load only
    the distributions installed here."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.delenv(ENV_DISABLE_AUTOLOAD, raising=False)
    monkeypatch.delenv(ENV_ONLY, raising=False)
    before = set(sys.modules)
    yield Site(path)
    for name in set(sys.modules) - before:
        if str(path) in (getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


@pytest.fixture
def toy_entry_points(site, monkeypatch):
    """The toy plugin installed as ``opdplug-toy`` 0.3 (entry points ``toy`` and ``toy_backend``)
    and ``OPDPLUG_PLUGINS`` naming only those: a fresh ``make_plugin_manager()`` (and so the
    CLI) loads the kernel and the toy, whatever else is installed."""
    site.install("opdplug-toy", {"toy": "toy_plugin", "toy_backend": "toy_backend"})
    monkeypatch.setenv(ENV_ONLY, "toy,toy_backend")
    return site
