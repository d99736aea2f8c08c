"""A third-party environment and locator (``agents/tests/thirdparty_env``, its own distribution)
found through the ``opdplug`` entry point alone, never passed in code: listed by ``opdplug
plugins``, played by ``opdplug agent eval``, and trained on by ``opdplug agent train`` with its
own locator chosen by name in the config, exactly like the built-in ones."""
from __future__ import annotations

import importlib.metadata
import json

import pytest

from opdplug.cli import main
from opdplug.errors import ConfigError
from opdplug_local import tiny
from opdplug_agents import textio
from opdplug_agents.locators import LocatorDeps
from opdplug_agents.registries import build_locator, env_class
from opdplug_agents.rollout import ExpertActor, PolicyActor, run_episodes
from opdplug_agents.task import AgentTask
from opdplug_agents.tools import format_call

ENTRY_POINT = "example_numberline"
DISTRIBUTION = "opdplug-example-numberline"
INSTALL = "run: .venv/bin/python -m pip install -c constraints.txt -e agents/tests/thirdparty_env (make test-env does)"


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_entry_point_is_installed():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="opdplug")}
    assert ENTRY_POINT in eps, INSTALL
    assert eps[ENTRY_POINT].dist.name == DISTRIBUTION


def test_the_registry_holds_it_like_a_built_in(opd_manager):
    manager = opd_manager()
    registry = manager.registry
    info = manager.infos[ENTRY_POINT]
    assert not info.error and info.distribution == DISTRIBUTION and info.version == "0.0.1"
    assert info.provides == {"environments": ["numberline"], "locators": ["first_invalid"]}
    assert {"calc_lookup", "gridnav", "numberline", "swapsort"} <= set(registry.names("environments"))
    assert registry.owners["environments"]["numberline"] == ENTRY_POINT
    assert registry.owners["locators"]["first_invalid"] == ENTRY_POINT
    assert registry.get("environments", "numberline", "env").__module__ == "opdplug_example_numberline.env"


def test_opdplug_plugins_lists_it(capsys):
    rc, out, _ = run(["plugins"], capsys)
    assert rc == 0 and f"{ENTRY_POINT}  ({DISTRIBUTION} 0.0.1)" in out
    assert "environments: numberline" in out and "locators: first_invalid" in out


def test_the_shared_vocabulary_and_the_task_cover_it():
    assert set(textio.agent_words(["numberline"])) <= set(AgentTask.words())
    task = AgentTask(env="numberline", min_horizon=2, max_horizon=3)
    prompts = task.prompts(4, seed=0)
    episodes = run_episodes([(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in prompts], ExpertActor(),
                            task.tokenizer, max_action_tokens=task.max_new_tokens(3), temperature=1.0, generator=None)
    assert all(e.success and e.num_turns == e.options["horizon"] + 1 for e in episodes)
    with pytest.raises(ValueError, match="numberline needs 1 <= min_horizon <= max_horizon <= 30"):
        AgentTask(env="numberline", min_horizon=1, max_horizon=31)


def test_eval_of_the_expert_through_the_cli(capsys):
    rc, out, _ = run(["agent", "eval", "expert", "--env", "numberline", "--horizons", "1,4", "--n", "3", "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    assert data["env"] == "numberline" and data["first_error_source"] == "locator:expert"
    assert {h: v["success"] for h, v in data["horizons"].items()} == {"1": 1.0, "4": 1.0}


def test_its_locator_is_chosen_by_name():
    tok = tiny.build_tokenizer(AgentTask.words())

    def student(env, turn):
        if turn == 0:  # a valid call in the wrong direction: wasteful, not invalid
            return format_call("down" if env.expert_action() == format_call("up") else "up")
        if turn == 1:  # a tool numberline does not have: the environment rejects it
            return format_call("swap", i=0)
        return env.expert_action()

    episodes = run_episodes([("numberline", seed, {"horizon": 3}) for seed in range(3)], PolicyActor(student), tok,
                            max_action_tokens=16, temperature=1.0, generator=None)
    deps = LocatorDeps(tokenizer=tok)
    first_invalid = build_locator("first_invalid", {"include_truncated": False}, "rollout.options.locator")
    assert type(first_invalid).__module__ == "opdplug_example_numberline.locator"
    assert first_invalid.locate(episodes, deps) == [1, 1, 1]
    assert build_locator("expert").locate(episodes, deps) == [0, 0, 0]  # the built-in sees the wasted move
    assert deps.stats["episodes"] == 6 and deps.stats["located"] == 6
    for name, options, message in (("first_invalidd", {}, "unknown locator 'first_invalidd'; allowed: expert, first_invalid,"),
                                   ("first_invalid", {"truncated": True}, "unknown key 'truncated'")):
        with pytest.raises(ConfigError, match=message):
            build_locator(name, options, "rollout.options.locator")


def test_training_on_it_through_the_cli_with_its_locator(tmp_path, capsys):
    out_dir = tmp_path / "run"
    config = tmp_path / "numberline.toml"
    config.write_text(
        f'[run]\noutput_dir = "{out_dir}"\nsteps = 2\nbatch_size = 2\nresume = false\nthreads = 1\n'
        '[student]\ntiny = "tiny"\n[teacher]\nscorer = "none"\n'
        '[task]\nname = "agent"\n[task.options]\nenv = "numberline"\nmin_horizon = 1\nmax_horizon = 2\n'
        '[rollout]\nsampler = "agent_score"\n'
        '[rollout.options]\nlocator = "first_invalid"\nkey_step_actor = "expert"\nlocator_options = {include_truncated = true}\n'
        '[loss]\nsupport = "sampled"\nestimator = "nll"\n'
    )
    rc, out, _ = run(["agent", "train", str(config), "--horizons", "1,2", "--n", "2", "--json"], capsys)
    assert rc == 0
    data = json.loads(out.strip().splitlines()[-1])
    assert data["steps"] == 2 and set(data["success"]) == {"1", "2"}
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["agent/episodes"] == 2 for row in rows)
    # An untrained student's calls are garbage: first_invalid locates them, the expert repairs.
    assert all(row["agent/located"] == row["agent/repairs"] == row["agent/expert_actions"] > 0 for row in rows)
    assert json.loads((out_dir / "success_by_horizon.json").read_text())["env"] == "numberline"


@pytest.mark.parametrize("task_options,message", [
    ('env = "numbreline"', "task.options.env = 'numbreline': unknown environment 'numbreline'; allowed: calc_lookup, gridnav, gymnasium, numberline,"),
    ('env = "numberline"\nmax_horizon = 31', "task 'agent': numberline needs 1 <= min_horizon <= max_horizon <= 30"),
    ('env = "numberline"\nenv_options = {size = 4}', "task 'agent': numberline: "),
])
def test_a_bad_agent_task_fails_before_anything_loads(tmp_path, capsys, task_options, message):
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[run]\noutput_dir = "{tmp_path / "run"}"\nsteps = 1\n[student]\ntiny = "tiny"\n[teacher]\nscorer = "none"\n'
        f'[task]\nname = "agent"\n[task.options]\n{task_options}\n[rollout]\nsampler = "agent_expert"\n'
        '[loss]\nsupport = "sampled"\nestimator = "nll"\n'
    )
    rc, _, err = run(["train", str(config)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("opdplug: error:")]
    assert rc != 0 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "run").exists() and "Traceback" not in err
    assert env_class("numberline").horizon_range == (1, 30)
