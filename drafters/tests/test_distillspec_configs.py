"""The shipped drafter configs and the ``[drafter]`` table."""
from __future__ import annotations

from pathlib import Path

import pytest

from opdplug.cli import load_config
from opdplug.config import parse_config
from opdplug.errors import ConfigError
from opdplug.prepare import validate
from opdplug.manager import make_plugin_manager
from opdplug_drafters.builtin_kinds import eagle3_options
from opdplug_drafters.options import DrafterOptions

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["drafter_distillspec.toml", "drafter_distillspec_offpolicy.toml", "drafter_eagle3.toml"])
def test_shipped_drafter_configs_validate(name):
    manager = make_plugin_manager()
    config = load_config(str(CONFIGS / name), manager)
    config = validate(config, manager).config
    options = config.plugin("drafter")
    assert isinstance(options, DrafterOptions) and options.draft_tokens == 4
    if options.kind == "standalone":
        assert options.eval_every > 0 and config.teacher.path == "runs/drafters/target"
        expected = {"drafter_distillspec.toml": ("on_policy", "tvd"), "drafter_distillspec_offpolicy.toml": ("teacher", "forward_kl")}
        assert (config.rollout.sampler, config.loss.divergence) == expected[name]
    else:
        eagle = eagle3_options(options.kind_table()[1])
        assert config.run.steps == 300 and config.run.checkpoint_every > 0 and eagle.ttt_steps == 7


def test_drafter_table_defaults_leave_other_runs_alone():
    manager = make_plugin_manager()
    config = parse_config({}, manager.plugin_tables())
    options = config.plugin("drafter")
    assert options == DrafterOptions() and not options.is_set()


@pytest.mark.parametrize("table, needle", [
    ({"kind": "medusa"}, "drafter.kind = 'medusa': unknown drafter kind 'medusa'; allowed: "),
    ({"draft_tokens": 0}, "draft_tokens"),
    ({"eval_temperatures": [-1.0]}, "eval_temperatures"),
    ({"kind": "eagle3", "eagle3": {"stepz": 3}}, "[drafter.eagle3] has unknown key 'stepz'"),
    ({"kind": "eagle3", "options": {"stepz": 3}}, "[drafter.options] has unknown key 'stepz'"),
    ({"kind": "eagle3", "eagle3": {"steps": 3}}, "drafter.eagle3.steps is now [run] steps"),
    ({"kind": "eagle3", "eagle3": {"ttt_steps": "many"}}, "ttt_steps"),
    ({"kind": "eagle3", "eagle3": {"aux_layers": ["a"]}}, "aux_layers"),
    ({"kind": "eagle3", "eagle3": {"steps": 1}, "options": {"steps": 2}}, "once"),
    ({"eagle3": {"steps": 1}}, "drafter.kind = 'standalone'"),
    ({"options": {"steps": 1}}, "takes no options"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_drafter_tables_are_one_line_errors(table, needle):
    """Shape errors when the table is read; the kind and its options against the registry, by
    ``opd_validate``, before anything is loaded."""
    manager = make_plugin_manager()
    with pytest.raises(ConfigError) as err:
        validate(parse_config({"drafter": table}, manager.plugin_tables()), manager)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_eagle3_table_becomes_their_options():
    pytest.importorskip("opdplug_drafters.eagle3")
    options = eagle3_options({"ttt_steps": 5, "aux_layers": [1, 3, 5], "draft_vocab_size": 16})
    assert options.ttt_steps == 5 and options.aux_layers == (1, 3, 5) and options.draft_vocab_size == 16


def test_kinds_are_registered():
    kinds = make_plugin_manager().registry.components["drafter_kinds"]
    assert {"standalone", "eagle3"} <= set(kinds)
    assert all(callable(kinds[k].load) and callable(kinds[k].recognises) for k in ("standalone", "eagle3"))
