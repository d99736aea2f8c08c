"""Batches of a third-party gymnasium game (TinyQuest, ``agents/tests/thirdparty_gym``) step
through gymnasium's vector API (``vector = "sync"`` / ``"async"``) and play exactly the episodes
the plain instances (``vector = "none"``) play for the same seeds, episodes of different lengths
included (the vector environment resets a finished game in the same step; its end is read from
``final_obs``/``final_info`` and the new episode's steps are dropped)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import gymnasium
import pytest

from opdplug.cli import main
from opdplug.testing.models import DEFAULT_CORPUS, build_bpe_tokenizer
from opdplug_agents.envpool import EnvPool
from opdplug_agents.registries import make_env
from opdplug_agents.rollout import PolicyActor, run_episodes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "agent_gymnasium.toml"
GAME = tomllib.loads(CONFIG.read_text())["task"]["options"]["env_options"]
CORPUS = (*DEFAULT_CORPUS, "Find the treasure. You are in the hall. A red key lies here. The north door is locked.",
          "take red key", "open north door", "go north", "The door opens. Nothing happens.")


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(CORPUS, vocab_size=300)


def clumsy(env, turn):
    """The expert, with seed-dependent blunders: episodes end after different numbers of turns
    (one never ends before TinyQuest's own 20-step limit)."""
    if env.episode % 7 == 3:
        return "dance"
    return "Dance wildly" if (env.episode + turn) % 3 == 0 else env.expert_action().upper()


def play(tok, vector, seeds, pool, split="train"):
    options = {**GAME, "horizon": 1, "split": split, "vector": vector}
    return run_episodes([("gymnasium", s, options) for s in seeds], PolicyActor(clumsy, "student"), tok,
                        max_action_tokens=24, temperature=0.0, generator=None, pool=pool)


def summary(episodes):
    return [(e.seed, e.token_ids, [t.action_text for t in e.turns], e.success, e.terminated, e.truncated,
             e.stop_reason, e.final_observation) for e in episodes]


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_vector_batches_play_the_episodes_of_plain_instances(tok, vector):
    seeds = [0, 3, 5, 8, 11, 13]
    plain_pool, pool = EnvPool(), EnvPool()
    try:
        plain = play(tok, "none", seeds, plain_pool)
        batched = play(tok, vector, seeds, pool)
        assert summary(batched) == summary(plain)
        turns = sorted({e.num_turns for e in plain})
        assert len(turns) >= 3 and any(e.success for e in plain) and any(e.stop_reason == "env_limit" for e in plain)
        assert not plain_pool._idle_groups and plain_pool.built == len(seeds)
        (groups,) = pool._idle_groups.values()  # one vector environment served the batch
        (group,) = groups
        kind = gymnasium.vector.AsyncVectorEnv if vector == "async" else gymnasium.vector.SyncVectorEnv
        assert isinstance(group.vec, kind) and group.n == len(seeds) and pool.built == len(seeds)
        assert group.vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
        # the next batch resets the same vector environment, whose finished slots were autoreset
        again = play(tok, vector, seeds[::-1], pool)
        assert summary(again) == summary(play(tok, "none", seeds[::-1], plain_pool)) and pool.built == len(seeds)
        # the eval split's search retries only the slots whose seed is a train game (reset_mask)
        assert summary(play(tok, vector, seeds, pool, "eval")) == summary(play(tok, "none", seeds, plain_pool, "eval"))
    finally:
        pool.close()
        plain_pool.close()
    assert not pool._idle_groups


def test_vector_is_the_default_and_a_bad_mode_is_one_line(tok, capsys):
    pool = EnvPool()
    options = {**GAME, "horizon": 1, "split": "train"}
    try:
        run_episodes([("gymnasium", 1, options)] * 2, PolicyActor(clumsy, "student"), tok, max_action_tokens=24,
                     temperature=0.0, generator=None, pool=pool)
        (groups,) = pool._idle_groups.values()
        assert isinstance(groups[0].vec, gymnasium.vector.SyncVectorEnv)
    finally:
        pool.close()
    with pytest.raises(ValueError, match="vector must be one of sync, async, none, got 'threads'"):
        make_env("gymnasium", {**options, "vector": "threads"})
    rc = main(["agent", "eval", "expert", "--env", "tinyquest:TinyQuest-v0", "--horizons", "1", "--n", "2",
               "--png", "", "--env-options", '{"vector": "threads"}'])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert err.strip().split("\r")[-1] == ("opdplug: error: agent eval: gymnasium TinyQuest-v0: vector must be one of "
                                           "sync, async, none, got 'threads'")
