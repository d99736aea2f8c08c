"""Chat-format agents on a real (byte-level BPE) tokenizer: turns in the student's chat template,
tools as JSON schemas through its ``tools`` argument, tool calls in a format chosen by name,
assistant ids kept exactly, each environment turn tokenized once, and a drift test against a
full re-render that names the template that drifts."""
from __future__ import annotations

import json

import pytest
import torch

from opdplug.errors import ConfigError
from opdplug.testing.models import CHATML_TEMPLATE, DEFAULT_CORPUS, build_bpe_tokenizer, build_model
from opdplug_agents.actors import ExpertActor, ModelActor
from opdplug_agents.registries import installed_registry
from opdplug_agents.rollout import run_episodes
from opdplug_agents.task import AgentTask
from opdplug_agents.toolcalls import canonical_of, render_canonical

CORPUS = (*DEFAULT_CORPUS, '<tool_call>\n{"name": "lookup", "arguments": {"name": "ann"}}\n</tool_call>',
          "who is the boss of ann ? answer with the number . lookup , calc , answer")


def _task(template="chatml", tool_format="hermes", **kw):
    tok = build_bpe_tokenizer(CORPUS, vocab_size=400, template=template)
    return tok, AgentTask(tok, env="calc_lookup", min_horizon=3, max_horizon=3, tool_format=tool_format, **kw)


def _expert_episodes(task, n=3):
    prompts = task.prompts(n, seed=0)
    specs = [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in prompts]
    return prompts, run_episodes(specs, ExpertActor(), task.codec, max_action_tokens=64, temperature=0.0, generator=None)


@pytest.mark.parametrize("template,tool_format", [("chatml", "hermes"), ("llama3", "llama3_json"), ("chatml", "json")])
def test_expert_plays_multi_turn_tool_calls_with_no_drift(template, tool_format):
    tok, task = _task(template, tool_format, system_prompt="You are a careful agent.")
    prompts, episodes = _expert_episodes(task)
    for prompt, episode in zip(prompts, episodes):
        assert episode.success and episode.num_turns >= 4  # multi-turn: lookups, a calc, an answer
        assert episode.prompt_ids == prompt.prompt_ids
        assert task.codec.drift(episode, task.env(episode.options)) is None
        text = tok.decode(list(episode.token_ids))
        assert "You are a careful agent." in text
        if tool_format == "hermes":
            assert text.count("<tool_call>") == episode.num_turns and "<|im_start|>tool\n" in text
    if template == "chatml":  # the tools reach the template as JSON schemas through its `tools` argument
        head = tok.decode(list(prompts[0].prompt_ids))
        schemas = [json.loads(line) for line in head.split("<tools>\n")[1].split("</tools>")[0].splitlines()]
        assert {s["function"]["name"] for s in schemas} == {"lookup", "calc", "answer"}
        assert all(s["type"] == "function" and "parameters" in s["function"] for s in schemas)


def test_a_model_acting_keeps_its_ids_exactly_and_never_meets_an_unknown_word():
    tok, task = _task()
    model = build_model("qwen2", tok, hidden_size=32, num_hidden_layers=1)
    prompts = task.prompts(4, seed=1)
    specs = [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in prompts]
    episodes = run_episodes(specs, ModelActor(model), task.codec, max_action_tokens=12, temperature=1.0,
                            generator=torch.Generator().manual_seed(0), max_turns=3)
    for episode in episodes:
        assert episode.num_turns >= 1 and episode.stop_reason
        pos = len(episode.bos_ids)
        for turn in episode.turns:  # the sequence is observation ids then the action's ids as sampled
            assert episode.token_ids[pos:pos + len(turn.observation_ids)] == turn.observation_ids
            pos += len(turn.observation_ids)
            assert episode.token_ids[pos:pos + len(turn.action_ids)] == turn.action_ids
            pos += len(turn.action_ids) + len(turn.closing_ids)
            assert len(turn.action_logprobs) == len(turn.action_ids)
        assert pos == len(episode.token_ids)


def test_the_context_budget_ends_an_episode_with_its_reason():
    tok, task = _task()
    prompts = task.prompts(2, seed=0)
    specs = [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in prompts]
    budget = len(prompts[0].prompt_ids) + 120
    episodes = run_episodes(specs, ExpertActor(), task.codec, max_action_tokens=64, temperature=0.0,
                            generator=None, max_tokens=budget)
    assert all(e.stop_reason == "context" and e.truncated and not e.success for e in episodes)
    for e in episodes:  # stopped because the next observation and a full action could not fit
        env = task.env(e.options)
        assert len(e.token_ids) <= budget
        assert len(e.token_ids) + len(task.codec.observation_ids(env, e.final_observation, False)) + 64 + 1 > budget


def test_a_template_that_rewrites_earlier_turns_is_named():
    tok, task = _task()
    _, episodes = _expert_episodes(task, n=1)
    # Like templates that drop think blocks from earlier turns: earlier assistant turns change.
    tok.chat_template = CHATML_TEMPLATE.replace(
        "{{ message['content'] + '<|im_end|>\\n' }}",
        "{% if message['role'] == 'assistant' and not loop.last %}{{ message['content'] | upper + '<|im_end|>\\n' }}"
        "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}")
    tok.name_or_path = "upper-history"
    message = task.codec.drift(episodes[0], task.env(episodes[0].options))
    assert message and message.startswith("upper-history (chat template ") and "drifts at token" in message


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "json"])
def test_tool_call_formats_round_trip_by_name(name):
    fmt = installed_registry().build("tool_call_formats", name, {}, "task.options.tool_format")
    canonical = '{"tool": "calc", "args": {"expr": "3 + 4"}}'
    written = render_canonical(fmt, canonical)
    assert written != canonical and json.loads(canonical_of(fmt, written)) == json.loads(canonical)
    assert canonical_of(fmt, "i think the answer is 7") == "i think the answer is 7"  # no call: the env says so


def test_an_unknown_tool_format_is_one_line():
    with pytest.raises(ConfigError, match="tool_format = 'hermez': unknown .*allowed: hermes, json, llama3_json"):
        _task(tool_format="hermez")
