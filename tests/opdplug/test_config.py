"""Config validation: every mistake is one line naming the key."""
from dataclasses import dataclass

import pytest

from opdplug.config import (
    Config, config_to_toml_dict, dump_toml, from_dict, load_toml, parse_config,
)
from opdplug.errors import ConfigError


def test_defaults_and_types():
    c = parse_config({"run": {"lr": 1, "steps": 5}, "teacher": {"options": {"beta": 0.3}}}, {})
    assert isinstance(c, Config)
    assert c.run.lr == 1.0 and isinstance(c.run.lr, float)
    assert c.run.steps == 5
    assert c.teacher.options == {"beta": 0.3}
    assert c.rollout.sampler == "" and c.teacher.scorer == ""  # the kernel names no component


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"rollout": {"temprature": 1}}, "[rollout] has unknown key 'temprature'; allowed keys: max_new_tokens, options, sampler"),
        ({"los": {}}, "unknown table [los]; allowed tables:"),
        ({"run": {"steps": "ten"}}, "run.steps must be an integer, got str 'ten'"),
        ({"run": {"steps": 1.5}}, "run.steps must be an integer"),
        ({"run": {"progress": 1}}, "run.progress must be true or false"),
        ({"run": {"lr_schedule": "exp"}}, "run.lr_schedule = 'exp' is not allowed; choose one of 'constant', 'linear', 'cosine'"),
        ({"student": {"lora_targets": "q_proj"}}, "student.lora_targets must be a list of str"),
        ({"run": 3}, "run must be a table"),
    ],
)
def test_one_line_errors(data, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(data, {})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@dataclass(frozen=True)
class MyOptions:
    alpha: float = 0.5
    mode: str = "a"


def test_plugin_tables_validated_and_defaulted():
    c = parse_config({"mine": {"alpha": 2}}, {"mine": MyOptions})
    assert c.plugin("mine") == MyOptions(alpha=2.0)
    assert parse_config({}, {"mine": MyOptions}).plugin("mine") == MyOptions()
    with pytest.raises(ConfigError, match=r"\[mine\] has unknown key 'beta'; allowed keys: alpha, mode"):
        parse_config({"mine": {"beta": 1}}, {"mine": MyOptions})


def test_from_dict_component_options():
    assert from_dict(MyOptions, {"mode": "b"}, "[x]") == MyOptions(mode="b")
    with pytest.raises(ConfigError, match="x.alpha must be a number"):
        from_dict(MyOptions, {"alpha": "high"}, "[x]")


def test_resolved_config_round_trips_through_toml(tmp_path):
    c = parse_config({"run": {"steps": 7}, "teacher": {"options": {"beta": 0.25}}, "mine": {"alpha": 1.5}}, {"mine": MyOptions})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(config_to_toml_dict(c)))
    again = parse_config(load_toml(path), {"mine": MyOptions})
    assert again.run == c.run and again.teacher == c.teacher and again.plugin("mine") == c.plugin("mine")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
