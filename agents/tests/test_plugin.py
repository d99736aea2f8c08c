"""The plugin loads through the real ``opdplug`` entry point and registers the environments."""
from __future__ import annotations

import importlib.metadata

import gymnasium
import pytest

from opdplug.errors import ConfigError
from opdplug_agents.envs import ENVS

EXPECTED = {"calc_lookup", "gridnav", "swapsort"}


def test_entry_point_is_installed():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="opdplug")}
    assert "agents" in eps, "run: pip install -c constraints.txt -e agents"
    assert eps["agents"].value == "opdplug_agents.plugin"
    assert eps["agents"].dist.name == "opdplug-agents"


def test_manager_loads_the_plugin_and_its_environments(opd_manager):
    manager = opd_manager()
    info = manager.infos["agents"]
    assert not info.error and info.distribution == "opdplug-agents" and info.version == "0.1.0"
    assert info.hooks == ["opd_register_environments"]
    registry = manager.registry
    assert EXPECTED <= set(registry.names("environments"))
    assert set(info.provides["environments"]) == EXPECTED
    assert {registry.owners["environments"][name] for name in EXPECTED} == {"agents"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_builds_a_working_env_by_name(opd_manager, name):
    factory = opd_manager().registry.get("environments", name, "env")
    env = factory(horizon=2, split="eval")
    assert isinstance(env, gymnasium.Env)
    obs, info = env.reset(seed=4)
    assert info["split"] == "eval" and env.observation_space.contains(obs)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(env.expert_action())
    assert info["success"]
    # The same environment through gymnasium's registry.
    assert gymnasium.make(factory.gym_id, horizon=2).unwrapped.name == name


def test_unknown_environment_is_a_one_line_config_error(opd_manager):
    with pytest.raises(ConfigError) as info:
        opd_manager().registry.get("environments", "gridnva", "env")
    message = str(info.value)
    assert "\n" not in message and "gridnav" in message and "unknown environment" in message


def test_only_this_plugin_can_be_selected(opd_manager, monkeypatch):
    monkeypatch.setenv("OPDPLUG_PLUGINS", "agents")
    manager = opd_manager()
    assert set(manager.infos) == {"opdplug", "agents"}
    owners = manager.registry.owners["environments"]
    assert {name for name, owner in owners.items() if owner == "agents"} == set(ENVS)
