"""The ``opdplug`` entry point: registers the environment and the locator by name."""
from __future__ import annotations

from opdplug.hookspecs import hookimpl

from .env import NumberLineEnv
from .locator import FirstInvalidLocator


@hookimpl
def opd_register_environments(register):
    register(NumberLineEnv.name, NumberLineEnv)


@hookimpl
def opd_register_locators(register):
    register(FirstInvalidLocator.name, FirstInvalidLocator)
