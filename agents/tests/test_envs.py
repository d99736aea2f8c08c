"""The environments: gymnasium's checker, determinism, experts, replay, errors, splits, vocabulary."""
from __future__ import annotations

import random
import warnings

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

from opdplug_agents import envs as agent_envs
from opdplug_agents.envs import BUILTIN, CalcLookupEnv, GridNavEnv, SwapSortEnv, split_of
from opdplug_agents.envs.base import EPISODE_OVER
from opdplug_agents.tools import format_call, pretokenize

BY_NAME = {cls.name: cls for cls in BUILTIN}
"""The environments this plugin ships, by name (what it registers)."""

# (name, a short horizon, a long horizon)
HORIZONS = [("calc_lookup", 1, 6), ("gridnav", 2, 12), ("swapsort", 1, 10)]
NAMES = [name for name, _, _ in HORIZONS]
SEEDS = range(12)

MALFORMED = [
    "",
    "go north",
    '{"tool": "fly", "args": {}}',
    '{"tool": "answer", "args": {"value": "3"}}',
    '{"tool": "move"}',
    '{"tool": "swap", "args": {"i": 0, "j": 1}}',
    "x" * 500,
]


def optimal_length(name: str, horizon: int) -> int:
    """Expert episode length: what each environment's ``horizon`` promises."""
    return {
        "calc_lookup": horizon + 2 if horizon > 1 else 2,  # lookups, calc, answer
        "gridnav": horizon,  # moves along a shortest path
        "swapsort": horizon + 1,  # swaps, done
    }[name]


def run_expert(env, seed: int, **reset_kwargs):
    obs, info = env.reset(seed=seed, **reset_kwargs)
    actions, observations = [], [obs]
    terminated = truncated = False
    while not (terminated or truncated):
        action = env.expert_action()
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        observations.append(obs)
    return actions, observations, reward, terminated, truncated, info


# ----------------------------------------------------------------------------- gymnasium
@pytest.mark.parametrize("name,short,long", HORIZONS)
def test_check_env_passes_at_two_horizons(name, short, long):
    for horizon in (short, long):
        env = gymnasium.make(BY_NAME[name].gym_id, horizon=horizon)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the checker reports problems as warnings too
            check_env(env.unwrapped)
        env.close()


def test_gymnasium_make_builds_each_env_with_its_knobs():
    env = gymnasium.make("opdplug/CalcLookup-v0", horizon=3)
    assert isinstance(env.unwrapped, CalcLookupEnv) and env.unwrapped.horizon == 3
    assert isinstance(gymnasium.make("opdplug/GridNav-v0", horizon=5, size=6).unwrapped, GridNavEnv)
    env = gymnasium.make("opdplug/SwapSort-v0", horizon=4, split="eval")
    obs, info = env.reset(seed=3)
    assert info["split"] == "eval" and info["horizon"] == 4
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
    assert env.observation_space.contains(obs) and not terminated


def test_bad_options_are_one_line_errors():
    for kwargs in [dict(horizon=0), dict(horizon=99), dict(split="test"), dict(max_turns=0), dict(eval_mod=1)]:
        with pytest.raises(ValueError) as info:
            SwapSortEnv(**kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="num_people"):
        CalcLookupEnv(horizon=5, num_people=3)
    with pytest.raises(ValueError, match="size"):
        GridNavEnv(horizon=10, size=4)
    with pytest.raises(ValueError, match="length"):
        SwapSortEnv(horizon=10, length=4)
    with pytest.raises(ValueError, match="unknown reset options"):
        SwapSortEnv().reset(seed=0, options={"horizon": 3})


# ----------------------------------------------------------------------------- determinism
def mixed_trajectory(env, seed: int, steps: int = 8):
    """Expert actions interleaved with seeded junk and other valid calls; every transition."""
    rng = random.Random(seed)
    out = [env.reset(seed=seed)]
    for t in range(steps):
        kind = t % 3
        action = env.expert_action() if kind == 0 else random_action(env, rng) if kind == 1 else rng.choice(MALFORMED)
        step = env.step(action)
        out.append((action, *step))
        if step[2] or step[3]:
            break
    return out


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_trajectory(name):
    for seed in (0, 7):
        a = mixed_trajectory(BY_NAME[name](horizon=4), seed)
        b = mixed_trajectory(BY_NAME[name](horizon=4), seed)
        assert a == b
    firsts = {BY_NAME[name](horizon=4).reset(seed=s)[0] for s in range(6)}
    assert len(firsts) > 1  # and different seeds differ


# ----------------------------------------------------------------------------- experts
@pytest.mark.parametrize("name,short,long", HORIZONS)
def test_expert_succeeds_optimally(name, short, long):
    for horizon in sorted({short, (short + long) // 2, long}):
        env = BY_NAME[name](horizon=horizon)
        for seed in SEEDS:
            actions, _, reward, terminated, truncated, info = run_expert(env, seed)
            assert terminated and not truncated and info["success"] and reward == 1.0, (horizon, seed)
            assert len(actions) == optimal_length(name, horizon), (horizon, seed, actions)
        _, _, _, _, _, info = run_expert(env, 0, options={"split": "eval"})
        assert info["success"] and info["split"] == "eval"


@pytest.mark.parametrize("name", NAMES)
def test_expert_recovers_from_mistakes(name):
    env = BY_NAME[name](horizon=3, max_turns=40)
    for seed in range(6):
        rng = random.Random(seed)
        env.reset(seed=seed)
        for _ in range(4):  # wander first (valid and invalid calls that do not end the episode)
            action = random_action(env, rng, ending=False)
            _, _, terminated, _, _ = env.step(action)
            assert not terminated
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(env.expert_action())
        assert info["success"], (seed, env.actions)


def test_expert_action_outside_an_episode_raises():
    env = SwapSortEnv(horizon=1)
    with pytest.raises(RuntimeError):
        env.expert_action()
    run_expert(env, 0)
    with pytest.raises(RuntimeError):
        env.expert_action()


# ----------------------------------------------------------------------------- replay
@pytest.mark.parametrize("name", NAMES)
def test_replay_reproduces_every_prefix(name):
    env = BY_NAME[name](horizon=4)
    for seed in (1, 2, 3):
        trajectory = mixed_trajectory(env, seed, steps=9)
        first_obs = trajectory[0][0]
        actions = [t[0] for t in trajectory[1:]]
        observations = [first_obs] + [t[1] for t in trajectory[1:]]
        for k in range(len(actions) + 1):
            assert env.replay(actions[:k]) == observations[k]
            assert env.actions == actions[:k] and env.turn == k
        # After a replay of a prefix the episode goes on like the original one.
        env.replay(actions[:2])
        step = env.step(actions[2])
        assert (actions[2], *step) == trajectory[3]


def test_replay_leaves_the_seed_stream_alone():
    a, b = GridNavEnv(horizon=5), GridNavEnv(horizon=5)
    a.reset(seed=11)
    b.reset(seed=11)
    a.replay([a.expert_action(), "junk"])
    assert a.reset()[0] == b.reset()[0]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", NAMES)
def test_malformed_and_invalid_calls_are_error_observations(name):
    env = BY_NAME[name](horizon=2, max_turns=50)
    obs0, _ = env.reset(seed=0)
    bad_values = {
        "calc_lookup": [format_call("lookup", name="zed"), format_call("calc", expr="1 / 0"),
                        format_call("calc", expr="5 // 0"), format_call("calc", expr="50 * 50")],
        "gridnav": [format_call("move", dir="up"), format_call("move", dir="")],
        "swapsort": [format_call("swap", i=-1), format_call("swap", i=99)],
    }[name]
    for turn, action in enumerate([*MALFORMED, *bad_values, None, 3.5], start=1):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.startswith("error : "), (action, obs)
        assert reward == 0.0 and not terminated and not truncated
        assert info["valid_action"] is False and info["success"] is False and info["turn"] == turn
        assert env.observation_space.contains(obs)
    assert env.replay([]) == obs0


@pytest.mark.parametrize("name", NAMES)
def test_truncation_at_the_turn_limit(name):
    env = BY_NAME[name](horizon=2)
    env.reset(seed=0)
    for turn in range(1, env.max_turns + 1):
        _, _, terminated, truncated, info = env.step("junk")
        assert not terminated and truncated == (turn == env.max_turns)
    assert info["success"] is False
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs == EPISODE_OVER and reward == 0.0 and truncated and not terminated


def test_wrong_final_actions_terminate_without_success():
    env = CalcLookupEnv(horizon=2)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(format_call("answer", value=-5))
    assert (reward, terminated, truncated, info["success"], info["valid_action"]) == (0.0, True, False, False, True)
    env = SwapSortEnv(horizon=2)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(format_call("done"))
    assert obs == "done , the list is not sorted" and terminated and not info["success"]


def test_gridnav_bumps_use_a_turn_but_are_valid():
    env = GridNavEnv(horizon=6)
    for seed in range(20):
        env.reset(seed=seed)
        maze, (r, c) = env.episode, env.episode.start
        for d, (dr, dc) in {"north": (-1, 0), "east": (0, 1), "south": (1, 0), "west": (0, -1)}.items():
            nxt = (r + dr, c + dc)
            if not maze.inside(nxt) or nxt in maze.walls:
                obs, _, terminated, _, info = env.step(format_call("move", dir=d))
                assert obs.startswith("blocked : ") and info["valid_action"] and not terminated
                assert obs.endswith(f"you are at row {r} col {c}")
                return
    pytest.fail("no start cell next to a wall or an edge in 20 seeds")


# ----------------------------------------------------------------------------- splits
@pytest.mark.parametrize("name,short,long", HORIZONS)
def test_train_and_eval_never_overlap(name, short, long):
    env = BY_NAME[name](horizon=short)
    keys = {}
    for split, n in (("train", 300), ("eval", 150)):
        keys[split] = set()
        for seed in range(n):
            _, info = env.reset(seed=seed, options={"split": split})
            assert info["split"] == split
            assert split_of(name, info["episode_key"], env.eval_mod) == split
            keys[split].add(info["episode_key"])
    assert not keys["train"] & keys["eval"]
    assert len(keys["eval"]) > 20  # many distinct eval episodes, not a handful repeated
    # The split is a property of the episode: an eval env never draws a train episode.
    eval_env = BY_NAME[name](horizon=short, split="eval")
    assert eval_env.reset(seed=0)[1]["episode_key"] in keys["eval"]


def test_about_one_episode_in_eval_mod_is_eval():
    env = SwapSortEnv(horizon=3)
    draws = [env._generate(env.np_random) for _ in range(2000)]
    share = sum(split_of("swapsort", d.key()) == "eval" for d in draws) / len(draws)
    assert 0.07 < share < 0.13


# ----------------------------------------------------------------------------- vocabulary
def random_action(env, rng: random.Random, ending: bool = True) -> str:
    """A seeded call of a random tool with plausible (often wrong) argument values."""
    names = ["ann", "bob", "zed", "Ivy ", ""]
    values = {
        "name": lambda: rng.choice(names + list(env.episode.names) if hasattr(env.episode, "names") else names),
        "expr": lambda: rng.choice(["1 + 2", "9 * 9 * 9", "7 // 0", "(3", "2 - 50", "-4", "7 + 8 + 9"]),
        "value": lambda: rng.randint(-5, 60),
        "dir": lambda: rng.choice(["north", "south", "east", "west", "up", "NORTH"]),
        "i": lambda: rng.randint(-2, 12),
    }
    tools = [t for t in env.tools if ending or t not in ("answer", "done")]
    spec = env.tools[rng.choice(tools)]
    if not ending and spec.name == "move":  # a move may reach the goal: stand still instead
        return format_call("move", dir="up")
    return format_call(spec.name, **{a.name: values[a.name]() for a in spec.args})


@pytest.mark.parametrize("name,short,long", HORIZONS)
def test_vocabulary_covers_every_observation_and_expert_action(name, short, long):
    cls = BY_NAME[name]
    vocab = set(cls.vocabulary())
    assert all(pretokenize(w) == [w] for w in vocab)  # each entry is one tokenizer word
    seen = set()
    for horizon in (short, long):
        env = cls(horizon=horizon, max_turns=30)
        for seed in range(25):
            rng = random.Random(seed)
            obs, _ = env.reset(seed=seed, options={"split": "eval" if seed % 4 == 0 else "train"})
            texts = [obs]
            done = False
            while not done:
                expert = env.expert_action()
                texts.append(expert)
                roll = rng.random()
                action = expert if roll < 0.6 else random_action(env, rng) if roll < 0.9 else rng.choice(MALFORMED)
                obs, _, terminated, truncated, _ = env.step(action)
                assert env.observation_space.contains(obs), obs
                texts.append(obs)
                done = terminated or truncated
            texts.append(env.step("after the end")[0])
            for text in texts:
                words = pretokenize(text)
                seen.update(words)
                assert set(words) <= vocab, (text, set(words) - vocab)
    assert len(seen) > len(vocab) // 3  # the episodes really exercised the vocabulary


def test_vocabulary_builds_a_tokenizer_without_unknowns():
    tokenizers = pytest.importorskip("tokenizers")
    vocab = agent_envs.vocabulary()
    ids = {w: i for i, w in enumerate(["<unk>", *vocab])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=ids, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    for name, cls in BY_NAME.items():
        _, observations, *_ = run_expert(cls(horizon=3), 5)
        actions, *_ = run_expert(cls(horizon=3), 5)
        for text in [*observations, *actions]:
            assert ids["<unk>"] not in tok.encode(text).ids, text
    assert len(vocab) < 300


# ----------------------------------------------------------------------------- fatal_errors
@pytest.mark.parametrize("name", NAMES)
def test_fatal_errors_end_the_episode_on_the_first_wrong_move(name):
    """``fatal_errors``: a move is fatal exactly when ``is_optimal`` says it is not optimal; the
    episode then ends failed, with the observation the plain environment gives for it; the expert
    still succeeds in the optimal number of moves."""
    fatal, plain = BY_NAME[name](horizon=3, fatal_errors=True), BY_NAME[name](horizon=3)
    for seed in range(4):
        actions, _, reward, terminated, truncated, info = run_expert(fatal, seed)
        assert terminated and info["success"] and reward == 1.0 and not info["fatal_error"]
        assert len(actions) == optimal_length(name, 3)
    ended = 0
    for seed in range(30):
        rng = random.Random(seed)
        fatal.reset(seed=seed)
        plain.reset(seed=seed)
        for _ in range(8):
            roll = rng.random()
            action = fatal.expert_action() if roll < 0.5 else random_action(fatal, rng) if roll < 0.9 else rng.choice(MALFORMED)
            optimal = fatal.is_optimal(action)  # leaves the state unchanged
            assert optimal == plain.is_optimal(action)
            obs, reward, terminated, truncated, info = fatal.step(action)
            plain_obs, _, plain_terminated, _, plain_info = plain.step(action)
            assert obs == plain_obs and info["valid_action"] == plain_info["valid_action"]
            assert info["fatal_error"] == (not optimal and not plain_terminated), (seed, action)
            if not optimal:
                assert terminated and not info["success"] and reward == 0.0
                assert fatal.step(fatal.actions[-1])[0] == EPISODE_OVER
                with pytest.raises(RuntimeError):
                    fatal.optimal_cost()
                # replay reproduces the fatal end; a replayed prefix before it is running again
                fatal.replay(fatal.actions)
                assert fatal.episode_over and fatal.step("x")[4]["fatal_error"] == info["fatal_error"]
                fatal.replay(fatal.actions[:-1])
                assert not fatal.episode_over and not fatal.step("x")[4]["success"]
                ended += 1
                break
            if terminated or truncated:
                break
    assert ended >= 10


def test_fatal_errors_first_error_is_the_last_turn():
    """The evaluation's cost-to-go first-error rule finds the fatal move (the episode's last)."""
    from opdplug_agents.evaluate import cost_to_go

    env = GridNavEnv(horizon=4, size=4, wall_density=0.1, fatal_errors=True)
    env.reset(seed=3)
    first = env.expert_action()
    env.step(first)
    wrong = next(format_call("move", dir=d) for d in ("north", "east", "south", "west")
                 if not env.is_optimal(format_call("move", dir=d)))
    assert env.step(wrong)[2] and env.episode_over and not env.solved
    assert cost_to_go(env, [first]) == 3 and cost_to_go(env, [first, wrong]) is None


def test_fatal_errors_option_is_checked_and_reaches_gymnasium_make():
    with pytest.raises(ValueError, match="fatal_errors must be true or false"):
        GridNavEnv(horizon=2, fatal_errors="yes")
    env = gymnasium.make(GridNavEnv.gym_id, horizon=2, fatal_errors=True)
    assert env.unwrapped.fatal_errors
    plain = GridNavEnv(horizon=2)
    plain.reset(seed=0)
    assert "fatal_error" not in plain.step("x")[4]  # the default environment's info is unchanged
