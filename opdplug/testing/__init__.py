"""Pytest fixtures for plugin authors (registered through the ``pytest11`` entry point).

Installed with opdplug, so any test suite gets them without a conftest:

* ``opd_manager``   a fresh plugin manager with every installed plugin (call it with extra plugin
  objects: ``opd_manager(my_plugin_module)``).
* ``opd_config``    a ``Config`` from a dict, validated with the installed plugins' tables.

The local backend (``opdplug-local``) adds ``fake_rollout`` and ``tiny_models`` the same way.

Imports stay inside the fixtures: pytest loads this module for every test run in the
environment, and must not pay for torch unless a fixture is used.
"""
from __future__ import annotations

import pytest


@pytest.fixture
def opd_manager():
    from opdplug.manager import make_plugin_manager

    def make(*plugins, autoload: bool = True):
        return make_plugin_manager(plugins, autoload=autoload)

    return make


@pytest.fixture
def opd_config():
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager

    def make(data: dict, manager=None):
        manager = manager or make_plugin_manager()
        return parse_config(data, manager.plugin_tables())

    return make
