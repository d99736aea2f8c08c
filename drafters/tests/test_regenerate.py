"""``opdplug drafter regenerate``: a Qwen2 target with a byte-level BPE tokenizer and ChatML
template writes the assistant turns of generated conversations again: every turn after the
regenerated ones (or the last), batched with results independent of the batch, resumable after
an interruption or a torn line, the template switch passed through, the same output from an
SGLang-served target, and bad input as one line with a non-zero exit."""
from __future__ import annotations

import json

import pytest

from opdplug.cli import main
from opdplug.errors import ConfigError
from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
from opdplug_drafters.regenerate import (Generated, LocalGenerator, RegenerateOptions, SGLangGenerator, regenerate,
                                         targets_of)
from opdplug_local import chat, chatgen, conversations

N = 7


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("regen")
    tok = build_bpe_tokenizer(chatgen.corpus(200), vocab_size=360)
    target = build_model_dir(root / "target", "qwen2", tok, hidden_size=32, num_hidden_layers=2, seed=4)
    records = chatgen.generate(N, seed=2)
    records[3]["messages"] = records[3]["messages"][:-1]  # one ends with a user turn: it gets a new answer
    source = root / "conv.jsonl"
    source.write_text("".join(json.dumps(chatgen.to_sharegpt(r)) + "\n" for r in records))  # ShareGPT in
    return root, target, source, LocalGenerator(str(target))


def read(path):
    return {r["id"]: r for r in conversations.read_conversations(path)}


OPTIONS = dict(max_new_tokens=6, temperature=1.0, seed=3)


def test_every_assistant_turn_is_the_targets_given_the_regenerated_history(world, tmp_path):
    root, _, source, generator = world
    summary = regenerate(source, tmp_path / "out.jsonl", generator, RegenerateOptions(batch_size=3, **OPTIONS), progress=False)
    original, new = read(source), read(tmp_path / "out.jsonl")
    assert list(new) == list(original) and summary["written"] == N and summary["skipped_done"] == 0
    for cid, record in new.items():
        old = original[cid]["messages"]
        plan = record["regenerated"]["turns"]
        assert plan == targets_of(old, "all")
        assert len(record["messages"]) == len(old) + (old[-1]["role"] == "user")
        for i, m in enumerate(record["messages"]):
            if i < len(old) and old[i]["role"] != "assistant":
                assert m == old[i]  # user and system turns are kept as they were
        # each new turn is exactly what the target writes after the history as regenerated so far
        for at in plan:
            prompt = chat.chat_prompt_ids(generator.tokenizer, record["messages"][:at])
            from opdplug.context import derive_seed

            again = generator.generate([prompt], [derive_seed(3, "regenerate", cid, at)], RegenerateOptions(**OPTIONS))[0]
            stop = next((j for j, t in enumerate(again.ids) if t in generator.stop_ids), len(again.ids))
            assert record["messages"][at] == {"role": "assistant", "content": generator.tokenizer.decode(
                again.ids[:stop], skip_special_tokens=True)}
    # the batch does not change the draws: one at a time gives the same file
    regenerate(source, tmp_path / "one.jsonl", generator, RegenerateOptions(batch_size=1, **OPTIONS), progress=False)
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()
    # and the output is conversation data the dataset task reads
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import build_task

    task = build_task(make_plugin_manager().registry, "dataset",
                      {"path": str(tmp_path / "out.jsonl"), "loss_turns": "all"}, generator.tokenizer)
    assert len(task.take(0, N, seed=0)[0]) == N


def test_last_mode_keeps_the_history(world, tmp_path):
    root, _, source, generator = world
    regenerate(source, tmp_path / "last.jsonl", generator, RegenerateOptions(turns="last", **OPTIONS), progress=False)
    original, new = read(source), read(tmp_path / "last.jsonl")
    for cid, record in new.items():
        old = original[cid]["messages"]
        last = len(old) if old[-1]["role"] == "user" else conversations.assistant_turns(old)[-1]
        assert record["regenerated"]["turns"] == [last]
        assert record["messages"][:last] == old[:last]


def test_interrupted_and_torn_runs_resume_to_the_same_file(world, tmp_path):
    root, _, source, generator = world
    straight = tmp_path / "straight.jsonl"
    regenerate(source, straight, generator, RegenerateOptions(batch_size=2, **OPTIONS), progress=False)

    class Killed(Exception):
        pass

    def kill_after_first_batch(written):
        raise Killed

    resumed = tmp_path / "resumed.jsonl"
    with pytest.raises(Killed):
        regenerate(source, resumed, generator, RegenerateOptions(batch_size=2, **OPTIONS), progress=False,
                   on_batch=kill_after_first_batch)
    lines = resumed.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    with open(resumed, "a") as f:  # what a crash in the middle of a write could leave
        f.write(lines[0][:17])
    summary = regenerate(source, resumed, generator, RegenerateOptions(batch_size=2, **OPTIONS), progress=False)
    assert summary == {**summary, "written": N - 2, "skipped_done": 2}
    assert resumed.read_text() == straight.read_text()
    # nothing left to do: a third run writes nothing
    assert regenerate(source, resumed, generator, RegenerateOptions(**OPTIONS), progress=False)["written"] == 0
    # resuming with other template switches would mix two renderings in one file
    with pytest.raises(ConfigError, match=r"resumed.jsonl:1: written with --template-kwargs \{\} and this run asks for"):
        regenerate(source, resumed, generator, RegenerateOptions(template_kwargs={"enable_thinking": False}, **OPTIONS),
                   progress=False)


class Recorder:
    """A stand-in target that records the prompts it is given and answers 'ok'."""

    def __init__(self, tokenizer):
        self.name, self.tokenizer, self.prompts = "recorder", tokenizer, []
        self.stop_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def generate(self, prompts, seeds, options):
        self.prompts += [self.tokenizer.decode(p) for p in prompts]
        return [Generated(ids=self.tokenizer("ok", add_special_tokens=False)["input_ids"] + self.stop_ids, truncated=False)
                for _ in prompts]


@pytest.mark.parametrize("thinking", [False, True])
def test_the_template_switch_reaches_every_prompt(world, tmp_path, thinking):
    root, _, source, generator = world
    recorder = Recorder(generator.tokenizer)
    regenerate(source, tmp_path / "t.jsonl", recorder,
               RegenerateOptions(template_kwargs={"enable_thinking": thinking}, **OPTIONS), progress=False)
    assert recorder.prompts and all(p.endswith("<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n"))
                                    for p in recorder.prompts)
    # later prompts carry the regenerated earlier answers, rendered with the same switch
    assert any(("<think>\n\n</think>\n\nok<|im_end|>" in p) != thinking for p in recorder.prompts)
    assert all(m["content"] == "ok" for r in read(tmp_path / "t.jsonl").values() for m in r["messages"] if m["role"] == "assistant")


def test_training_with_other_switches_than_the_regeneration_is_refused(world, tmp_path):
    """SpecForge issue 296 as a one-line error: the regenerated file records its switches."""
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import build_task

    root, _, source, generator = world
    out = tmp_path / "off.jsonl"
    regenerate(source, out, Recorder(generator.tokenizer), RegenerateOptions(template_kwargs={"enable_thinking": False}, **OPTIONS),
               progress=False)
    registry = make_plugin_manager().registry
    same = build_task(registry, "dataset", {"path": str(out), "loss_turns": "all", "template_kwargs": {"enable_thinking": False}},
                      generator.tokenizer)
    assert len(same.take(0, 3, seed=0)[0]) == 3
    for switches in ({}, {"enable_thinking": True}):
        other = build_task(registry, "dataset", {"path": str(out), "template_kwargs": switches}, generator.tokenizer)
        with pytest.raises(ConfigError, match=r"regenerated with template_kwargs \{'enable_thinking': False\} but "
                                              r"task.options.template_kwargs = "):
            other.take(0, 1, seed=0)


def test_an_sglang_served_target_writes_the_same_greedy_turns(world, tmp_path):
    from opdplug_sglang.testing.reference_server import ReferenceServer

    root, target, source, generator = world
    greedy = RegenerateOptions(batch_size=4, max_new_tokens=6, temperature=0.0)
    regenerate(source, tmp_path / "local.jsonl", generator, greedy, progress=False)
    with ReferenceServer(str(target)) as server:
        url = server.url
        served = SGLangGenerator([url], str(target))
        summary = regenerate(source, tmp_path / "served.jsonl", served, greedy, progress=False)
    assert summary["written"] == N and summary["target"] == url
    assert (tmp_path / "served.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()


def test_the_command_line(world, tmp_path, capsys):
    root, target, source, _ = world
    out = tmp_path / "cli.jsonl"
    args = ["drafter", "regenerate", str(source), str(out), "--target", str(target), "--max-new-tokens", "4",
            "--batch-size", "4", "--template-kwargs", '{"enable_thinking": false}', "--json"]
    capsys.readouterr()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == N and summary["template_kwargs"] == {"enable_thinking": False}
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["skipped_done"] == N

    bad = tmp_path / "bad.jsonl"
    bad.write_text(source.read_text() + '{"conversations": []}\n')
    cases = {
        "the conversation is empty": [str(bad), str(tmp_path / "x.jsonl"), "--target", str(target)],
        "exactly one of --target": [str(source), str(tmp_path / "x.jsonl")],
        "needs --tokenizer": [str(source), str(tmp_path / "x.jsonl"), "--sglang-url", "http://127.0.0.1:9"],
        "must be a JSON object": [str(source), str(tmp_path / "x.jsonl"), "--target", str(target), "--template-kwargs", "yes"],
        "is the input file": [str(source), str(source), "--target", str(target)],
    }
    errors = {}
    for expected, rest in cases.items():
        code = main(["drafter", "regenerate", *rest])
        errors[expected] = err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{bad}:{N + 1}: " in errors["the conversation is empty"]  # the file and the line
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_other_target_architectures(world, tmp_path, arch):
    root, _, source, generator = world
    target = build_model_dir(tmp_path / arch, arch, generator.tokenizer, hidden_size=32, num_hidden_layers=1, seed=5)
    local = LocalGenerator(str(target))
    summary = regenerate(source, tmp_path / "out.jsonl", local, RegenerateOptions(limit=2, batch_size=2, **OPTIONS), progress=False)
    assert summary["written"] == 2 and len(read(tmp_path / "out.jsonl")) == 2


def test_options_are_checked():
    with pytest.raises(ConfigError, match="--turns"):
        RegenerateOptions(turns="first")
    with pytest.raises(ConfigError, match="--batch-size"):
        RegenerateOptions(batch_size=0)
