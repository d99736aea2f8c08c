"""The ``llm_judge`` locator against a chat model served by a real SGLang server (the ``sglang``
lane, ``make test-sglang``).

The judge is a tiny random-weight Qwen2 with a byte-level BPE tokenizer and a ChatML template,
built locally by ``opdplug.testing.models`` and served by real SGLang through the sglang plugin's
own command, ``opdplug sglang serve`` (its entry point: opdplug-agents does not depend on
opdplug-sglang, so the test starts the server as a user would).
It judges nothing well (its accuracy is measured by ``bench/agents_judge.py``); what is checked
is the plumbing end to end: the locator comes through the registry, every episode with a student
turn gets one request, every reply is parsed or counted as unparseable with a note, the server's
token counts add up, and a JSON-schema request is answered under constrained decoding.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent_stubs import bad_student
from opdplug_agents import textio
from opdplug_agents.envs import BUILTIN
from opdplug_agents.locators import ExpertLocator, LocatorDeps, build_locator, judge_messages, parse_judge_reply
from opdplug_agents.rollout import ExpertActor, run_episodes

pytestmark = pytest.mark.sglang
OPDPLUG = Path(sys.executable).with_name("opdplug")


@pytest.fixture(scope="module")
def tok():
    from opdplug_local import tiny

    return tiny.build_tokenizer(textio.agent_words(sorted(cls.name for cls in BUILTIN)))


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir

    directory = tmp_path_factory.mktemp("judge") / "model"
    build_model_dir(directory, "qwen2", build_bpe_tokenizer(vocab_size=600), hidden_size=64, max_position_embeddings=4096)
    port = _free_port()
    # the plugin's launcher, as a user runs it (no radix cache, as the sglang plugin's own tests)
    process = subprocess.Popen([str(OPDPLUG if OPDPLUG.exists() else shutil.which("opdplug")), "sglang", "serve",
                                "--port", str(port), str(directory), "--", "--disable-radix-cache"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in process.stdout:  # blocks until the server answers (the command prints its URL then)
        lines.append(line)
        found = re.search(r" at (http://\S+) ", line)
        if found:
            break
    else:
        pytest.fail("opdplug sglang serve exited before serving: " + "".join(lines[-5:]))
    yield found.group(1)
    process.send_signal(signal.SIGINT)  # the command stops its server on Ctrl-C
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def labelled(tok):
    """gridnav and calc_lookup episodes whose first error the expert locator knows (turn 0, 1, 2
    or none)."""
    episodes = []
    for env in ("gridnav", "calc_lookup"):
        specs = [(env, seed, {"horizon": 4}) for seed in range(3)]
        for bad in ({0}, {1}, {2}):
            episodes += run_episodes(specs[:1], bad_student(bad), tok, max_action_tokens=40, temperature=1.0, generator=None)
        episodes += run_episodes(specs[1:2], ExpertActor("student"), tok, max_action_tokens=40, temperature=1.0, generator=None)
    labels = ExpertLocator().locate(episodes, LocatorDeps(tokenizer=tok))
    assert labels.count(None) >= 2 and {0, 1, 2} <= set(labels)
    return episodes, labels


@pytest.mark.timeout(600)
@pytest.mark.parametrize("json_schema", [False, True], ids=["free", "json_schema"])
def test_llm_judge_against_a_real_sglang_server(tok, judge_server, labelled, json_schema):
    episodes, labels = labelled
    url = judge_server + "/v1/chat/completions"
    locator = build_locator("llm_judge", {"url": url, "model": "default", "retries": 0, "max_tokens": 24,
                                          "json_schema": json_schema})
    deps = LocatorDeps(tokenizer=tok)
    found = locator.locate(episodes, deps)

    assert len(found) == len(episodes) == len(labels)
    assert deps.stats["judge_calls"] == len(episodes)  # one request per episode, each answered
    assert deps.stats["episodes"] == len(episodes) and deps.stats["located"] == sum(k is not None for k in found)
    # every reply is parsed (a turn or null) or counted as unparseable, with a note naming the episode
    assert deps.stats["judge_failures"] == len(deps.notes) <= len(episodes)
    assert all(note.startswith("llm_judge (") for note in deps.notes)
    for episode, k in zip(episodes, found):
        assert k is None or (0 <= k < episode.num_turns and episode.turns[k].producer == "student")
    # the server's own token counts: every prompt holds the whole episode, every reply <= max_tokens
    assert deps.stats["judge_prompt_tokens"] > 50 * len(episodes)
    assert 0 < deps.stats["judge_completion_tokens"] <= 24 * len(episodes)


@pytest.mark.timeout(300)
def test_json_schema_replies_start_as_the_schema_says(judge_server, labelled):
    """Under constrained decoding even a random model's reply begins with the one allowed key."""
    episodes, _ = labelled
    locator = build_locator("llm_judge", {"url": judge_server + "/v1/chat/completions", "retries": 0,
                                          "max_tokens": 24, "json_schema": True})
    episode = episodes[0]
    reply = locator.request(judge_messages(episode), [0, 1, 2])
    content = reply["choices"][0]["message"]["content"]
    assert content.lstrip().startswith('{"first_error"')
    index, reason = parse_judge_reply(content, episode.num_turns)
    assert (index in (0, 1, 2, None) and not reason) or reply["choices"][0]["finish_reason"] == "length"
