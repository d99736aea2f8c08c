"""A gymnasium text game written without opdplug in mind (``agents/tests/thirdparty_gym``,
pip-installed as ``tinyquest``) played through the ``gymnasium`` adapter from config alone:
BC, DAgger, agent OPD and SCoRe each train on it from ``configs/agent_gymnasium.toml`` with
only ``[rollout]`` and the model paths changed; capabilities it lacks refuse in one line."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import tomllib
from pathlib import Path

import pytest

from opdplug.cli import main
from opdplug.testing.models import DEFAULT_CORPUS, build_bpe_tokenizer, build_model_dir
from opdplug_agents.envs import MissingCapability
from opdplug_agents.registries import make_env
from opdplug_agents.rollout import ExpertActor, run_episodes
from opdplug_agents.task import AgentTask

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "agent_gymnasium.toml"
GAME = tomllib.loads(CONFIG.read_text())["task"]["options"]["env_options"]
INSTALL = "run: .venv/bin/python -m pip install -c constraints.txt -e agents/tests/thirdparty_gym (make test-env does)"
CORPUS = (*DEFAULT_CORPUS, "Find the treasure. You are in the hall. A red key lies here. The north door is locked.",
          "take red key", "open north door", "go north", "The door opens. Nothing happens.")


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_game_is_pip_installed_and_knows_nothing_of_opdplug():
    dist = importlib.metadata.distribution("tinyquest")
    assert not any("opdplug" in r for r in (dist.requires or [])), INSTALL
    package = Path(importlib.util.find_spec("tinyquest").origin).parent  # found, not imported by name here
    for path in package.glob("*.py"):
        assert "opdplug" not in path.read_text()


def test_adapter_plays_the_expert_and_replays():
    env = make_env("gymnasium", {**GAME, "horizon": 1, "split": "train"})
    obs, info = env.reset(seed=5)
    assert obs.startswith("Find the treasure") and info["episode_key"] == str(info["game"])
    actions = []
    while not env.episode_over:
        action = env.expert_action().upper()  # free text, any case
        assert env.is_optimal(action) and not env.is_optimal("dance")
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
    assert env.solved and info["success"] and terminated and len(actions) == 6
    assert env.replay(actions[:2]) != obs and not env.episode_over
    env.close()


def test_train_and_eval_splits_never_share_a_game():
    keys = {}
    for split in ("train", "eval"):
        env = make_env("gymnasium", {**GAME, "horizon": 1, "split": split, "pool": 30})
        keys[split] = {env.reset(seed=s)[1]["episode_key"] for s in range(40)}
    assert keys["train"] and keys["eval"] and not keys["train"] & keys["eval"]


def test_missing_capabilities_refuse_in_one_line():
    env = make_env("gymnasium", {"id": "TinyQuest-v0", "module": "tinyquest", "horizon": 1, "split": "train"})
    env.reset(seed=0)
    with pytest.raises(MissingCapability, match="has no expert: set expert_key or expert"):
        env.expert_action()
    env = make_env("gymnasium", {**GAME, "replay": False, "horizon": 1, "split": "train"})
    env.reset(seed=0)
    with pytest.raises(MissingCapability, match="cannot replay episodes"):
        env.replay([])
    with pytest.raises(ValueError, match="module = 'no_such_game' cannot be imported"):
        make_env("gymnasium", {"id": "X-v0", "module": "no_such_game", "horizon": 1, "split": "train"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = build_bpe_tokenizer(CORPUS, vocab_size=400)
    student = build_model_dir(root / "student", "qwen2", tok, hidden_size=32, num_hidden_layers=1)
    teacher = build_model_dir(root / "teacher", "qwen2", tok, hidden_size=32, num_hidden_layers=1, seed=1)
    return tok, student, teacher


def test_a_subword_tokenizer_plays_it_with_its_chat_template(models):
    tok = models[0]
    task = AgentTask(tok, env="gymnasium", min_horizon=1, max_horizon=1, env_options=GAME)
    prompt = task.prompts(1, seed=0)[0]
    assert tok.decode(list(prompt.prompt_ids)).startswith("<|im_start|>user\nFind the treasure")
    episodes = run_episodes([(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in task.prompts(3, seed=0)],
                            ExpertActor(), task.codec, max_action_tokens=16, temperature=0.0, generator=None)
    assert all(e.success and e.stop_reason == "terminated" for e in episodes)
    assert all(task.codec.drift(e, task.env(e.options)) is None for e in episodes)
    assert task.verify(prompt, list(episodes[0].token_ids[len(prompt.prompt_ids):])) in (0.0, 1.0)


METHODS = {
    "bc": {"sampler": "agent_expert"},
    "dagger": {"sampler": "agent_dagger", "options": {"teacher_actor": "expert", "states_per_episode": 2}},
    "agent_opd": {"sampler": "agent", "scorer": "local", "loss": {"support": "full", "divergence": "reverse_kl"}},
    "score": {"sampler": "agent_score", "scorer": "local", "options": {"locator": "expert", "key_step_actor": "expert"},
              "loss": {"support": "full", "divergence": "reverse_kl"}},
}


def _toml(value):
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_on_it_from_the_shipped_config(method, models, tmp_path, capsys):
    """The shipped config with only the model paths, the run's size and [rollout] changed."""
    _, student, teacher = models
    spec = METHODS[method]
    text = CONFIG.read_text()
    text = text.replace('"runs/agents/tinyquest/student"', json.dumps(str(student)))
    text = text.replace('"runs/agents/tinyquest/teacher"', json.dumps(str(teacher)))
    text = text.replace('output_dir = "runs/agent_gymnasium"', f"output_dir = {json.dumps(str(tmp_path / 'run'))}\nresume = false")
    text = text.replace("steps = 50", "steps = 2").replace("batch_size = 8", "batch_size = 2")
    text = text.replace('sampler = "agent_expert"', f'sampler = "{spec["sampler"]}"')
    text = text.replace('scorer = "none"', f'scorer = "{spec.get("scorer", "none")}"')
    if "options" in spec:
        text += "[rollout.options]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in spec["options"].items())
    if "loss" in spec:
        text = text.replace('support = "sampled"\nestimator = "nll"\n',
                            "".join(f"{k} = {_toml(v)}\n" for k, v in spec["loss"].items()))
    (tmp_path / "c.toml").write_text(text)
    rc, out, err = run(["agent", "train", str(tmp_path / "c.toml"), "--horizons", "1", "--n", "2", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["agent/episodes"] == 2 for row in rows)
    if method == "agent_opd":  # its teacher work is the loss's scoring: counted as teacher calls and tokens
        assert all(row["agent/teacher_calls"] == row["agent/teacher_scored_rows"] == 2 for row in rows)
        assert all(row["agent/teacher_tokens"] > 0 for row in rows)


def test_behaviour_cloning_without_an_expert_is_one_line(models, tmp_path, capsys):
    _, student, teacher = models
    text = CONFIG.read_text().replace('"runs/agents/tinyquest/student"', json.dumps(str(student)))
    text = text.replace('"runs/agents/tinyquest/teacher"', json.dumps(str(teacher))).replace('expert_key = "expert"', "")
    text = text.replace('output_dir = "runs/agent_gymnasium"', f"output_dir = {json.dumps(str(tmp_path / 'run'))}")
    text = text.replace("steps = 50", "steps = 1").replace("batch_size = 8", "batch_size = 1")
    (tmp_path / "c.toml").write_text(text)
    rc, _, err = run(["train", str(tmp_path / "c.toml")], capsys)
    lines = [line for line in err.splitlines() if line.startswith("opdplug: error:")]
    assert rc != 0 and len(lines) == 1 and "has no expert" in lines[0], err


def test_eval_by_gymnasium_id_from_the_command_line(capsys):
    """``--env`` takes a gymnasium id (``module:`` imports the game first); unknown ids are one line."""
    options = json.dumps({"success_key": "won", "expert_key": "expert"})
    rc, out, err = run(["agent", "eval", "expert", "--env", "tinyquest:TinyQuest-v0", "--env-options", options,
                        "--horizons", "1", "--n", "3", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["horizons"]["1"]["success"] == 1.0
    rc, _, err = run(["agent", "eval", "expert", "--env", "NoSuch-v0", "--horizons", "1"], capsys)
    assert rc != 0 and "unknown environment 'NoSuch-v0'; allowed: calc_lookup, gridnav, gymnasium" in err


def test_eval_draws_distinct_games_from_a_finite_pool():
    from opdplug_agents.evaluate import success_by_horizon

    tok = build_bpe_tokenizer(CORPUS, vocab_size=300)
    options = {k: v for k, v in GAME.items() if k not in ("rooms",)}
    report = success_by_horizon("expert", tok, "gymnasium", [1], 6, env_options={**options, "pool": 1000})
    assert report.results[1].distinct == 6 and report.results[1].success == 1.0
    small = success_by_horizon("expert", tok, "gymnasium", [1], 6, env_options={**options, "pool": 30})
    assert small.results[1].distinct < 6  # a pool with fewer held-out games repeats them, and says so
