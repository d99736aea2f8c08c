"""The token interface: vocabulary, exact observation ids, action decoding, the layout parser."""
from __future__ import annotations

import json

import pytest

from opdplug_local import tiny
from opdplug.errors import ConfigError
from opdplug_agents import textio
from opdplug_agents.envs import BUILTIN
from opdplug_agents.registries import env_class
from opdplug_agents.textio import MARKER
from opdplug_agents.tools import parse_call, pretokenize

ALL = sorted(cls.name for cls in BUILTIN)


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(textio.agent_words(ALL))


def expert_actions(name: str, horizon: int, seed: int) -> tuple[list[str], list[str]]:
    """(observations, expert actions) of one expert episode."""
    env = env_class(name)(horizon=horizon)
    obs, _ = env.reset(seed=seed)
    observations, actions, done = [obs], [], False
    while not done:
        actions.append(env.expert_action())
        obs, _, terminated, truncated, _ = env.step(actions[-1])
        observations.append(obs)
        done = terminated or truncated
    return observations, actions


def test_agent_words_are_the_sorted_union_plus_the_marker():
    words = textio.agent_words(ALL)
    assert words[-1] == MARKER and words[:-1] == sorted({w for n in ALL for w in env_class(n).vocabulary()})
    assert textio.agent_words(list(reversed(ALL))) == words  # order of the names does not matter
    assert all(MARKER not in env_class(n).vocabulary() for n in ALL)
    assert pretokenize(MARKER) == [MARKER]  # one pre-token, so one id
    assert set(textio.agent_words(["gridnav"])) < set(words)
    with pytest.raises(ConfigError, match="unknown environment 'gridnva'"):
        textio.agent_words(["gridnva"])


def test_observations_encode_to_exact_word_ids(tok):
    vocab = tok.get_vocab()
    for name in ALL:
        observations, _ = expert_actions(name, 3, seed=1)
        for obs in observations:
            ids = textio.encode_observation(tok, obs, name)
            assert ids == [vocab[w] for w in obs.split()]  # observations are space-separated words
            assert tok.unk_token_id not in ids and textio.marker_id(tok) not in ids
    with pytest.raises(ValueError) as info:
        textio.encode_observation(tok, "you moved up zzz", "gridnav")
    message = str(info.value)
    assert "\n" not in message and "'up'" in message and "gridnav" in message


def unspaced(call):
    """A parsed call with the spaces inside its string values removed."""
    return call.tool, {k: v.replace(" ", "") if isinstance(v, str) else v for k, v in call.args.items()}


@pytest.mark.parametrize("name", ALL)
def test_expert_actions_round_trip_through_tokens(tok, name):
    tools = env_class(name).tools
    for horizon in (1, 2, 4):
        for seed in range(4):
            actions = expert_actions(name, horizon, seed)[1]
            decoded = []
            for action in actions:
                ids = textio.encode_action(tok, action, name)
                assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
                text = textio.decode_action(tok, ids)
                decoded.append(text)
                assert " " not in text  # compact JSON: no value an expert writes needs a space
                call = parse_call(text, tools)
                assert not isinstance(call, str), (action, text, call)
                # The same call; only calc expressions differ, by spaces ("1 + 4" -> "1+4").
                assert unspaced(call) == unspaced(parse_call(action, tools))
                if name != "calc_lookup":
                    assert text == json.dumps(json.loads(action), separators=(",", ":"))
            # And the decoded texts solve the episode just as the expert's did.
            env = env_class(name)(horizon=horizon)
            env.reset(seed=seed)
            for text in decoded:
                _, _, terminated, _, info = env.step(text)
            assert terminated and info["success"]


def test_compact_calls_are_accepted_and_validation_is_unchanged():
    tools = env_class("gridnav").tools
    assert not isinstance(parse_call('{"tool":"move","args":{"dir":"north"}}', tools), str)
    assert isinstance(parse_call('{"tool":"move","args":{"dir":3}}', tools), str)
    assert isinstance(parse_call('{"tool":"move","args":{}}', tools), str)


def test_join_keeps_a_space_only_between_words():
    assert textio.join_pretokens(["{\"", "tool", "\":", "\"", "move", "\"}"]) == '{"tool":"move"}'
    assert textio.join_pretokens(["7", "+", "3"]) == "7+3"
    assert textio.join_pretokens(["ann", "bob", ","]) == "ann bob,"


def test_decode_stops_at_eos_and_keeps_stray_specials(tok):
    ids = textio.encode_action(tok, '{"tool": "done", "args": {}}')
    assert textio.decode_action(tok, ids + ids) == '{"tool":"done","args":{}}'
    assert textio.decode_action(tok, ids[:-1]) == '{"tool":"done","args":{}}'  # no eos: all of it
    text = textio.decode_action(tok, [tok.bos_token_id, *ids])
    assert text.startswith("<bos>") and isinstance(parse_call(text, env_class("swapsort").tools), str)


def test_split_actions_reads_both_layouts(tok):
    a = textio.encode_action(tok, '{"tool": "move", "args": {"dir": "north"}}')
    b = textio.encode_action(tok, '{"tool": "done", "args": {}}')
    obs = [*textio.encode_observation(tok, "list : 3 4"), textio.marker_id(tok)]
    # Full layout: action, observation, marker, action; a truncated action then a stray marker.
    assert textio.split_actions(tok, a + obs + b) == [a[:-1], b[:-1]]
    cut = [a[0], textio.marker_id(tok), a[1]]  # the model wrote the marker inside its action
    assert textio.split_actions(tok, cut + [tok.eos_token_id] + obs + b) == [cut, b[:-1]]
    assert textio.split_actions(tok, a + obs) == [a[:-1]]
    # Actions only (the loss-masked tokens).
    assert textio.split_actions(tok, a + b) == [a[:-1], b[:-1]]
    assert textio.split_actions(tok, []) == []
