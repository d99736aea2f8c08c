"""Conversation data: ShareGPT and OpenAI JSONL normalised into one form, rendered with the
target's own chat template (Qwen2 / Qwen3 ChatML, Llama-3), a loss mask on the assistant turns
only (checked by decoding the masked tokens), the template switch configured being the one used,
and every kind of bad input as one line naming the file, the line and the fix."""
from __future__ import annotations

import json

import pytest

from opdplug.cli import main
from opdplug.config import dump_toml
from opdplug.errors import ConfigError
from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
from opdplug_local import chatgen, conversations
from opdplug_local.models import reference_rollout

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 plus 30?"},
    {"role": "assistant", "content": "12 plus 30 is 42."},
    {"role": "user", "content": "And if I multiply that by 2?"},
    {"role": "assistant", "content": "42 times 2 is 84."},
]
SHAREGPT = {"id": 7, "conversations": [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
                                        "value": m["content"]} for m in CONVERSATION]}


@pytest.fixture(scope="module")
def tokenizers():
    texts = chatgen.corpus(300) + [m["content"] for m in CONVERSATION]
    return {"chatml": build_bpe_tokenizer(texts, vocab_size=420),
            "llama3": build_bpe_tokenizer(texts, vocab_size=420, template="llama3")}


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# -- the pure module ---------------------------------------------------------------------------
def test_sharegpt_and_openai_normalise_to_the_same_record():
    openai = conversations.normalise_record({"id": "7", "messages": CONVERSATION, "topic": "math"}, "f:1", line=1)
    sharegpt = conversations.normalise_record({**SHAREGPT, "topic": "math"}, "f:1", line=1)
    assert openai == sharegpt == {"id": "7", "messages": CONVERSATION, "topic": "math"}
    # no id: the line number stands in (stable across runs over the same file)
    assert conversations.normalise_record({"messages": CONVERSATION}, "f:9", line=9)["id"] == "line-9"
    # OpenAI content parts of type text are joined
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert conversations.normalise_turns(parts, "f:1") == [{"role": "user", "content": "ab"}]


def test_read_conversations_streams_both_formats(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": CONVERSATION}, "", SHAREGPT])
    records = list(conversations.read_conversations(path))
    assert [r["id"] for r in records] == ["line-1", "7"] and all(r["messages"] == CONVERSATION for r in records)
    assert conversations.check_file(path) == 2


BAD_LINES = {
    "missing_key": ({"prompt": "hi"}, "no 'messages' or 'conversations' key", '{"messages": [{"role"'),
    "unknown_role": ({"messages": [{"role": "wizard", "content": "x"}]}, "unknown role 'wizard'", "use one of system, user"),
    "unknown_from": ({"conversations": [{"from": "bot", "value": "x"}]}, "unknown role (ShareGPT 'from') 'bot'", "use one of"),
    "empty": ({"messages": []}, "the conversation is empty", "give it at least one user turn"),
    "no_text": ({"messages": [{"role": "user"}]}, "has no text in 'content'", "give it a string"),
    "no_role": ({"messages": [{"content": "x"}]}, "neither 'role' nor 'from'", "give every turn a role"),
    "not_jsonl": ('[{"messages": [], "x": 1},', "not valid JSON", "the file must be JSONL"),
    "array_line": ([{"messages": CONVERSATION}], "a JSON list, not an object", "write one JSON object per line"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_input_names_file_line_and_fix(tmp_path, case):
    record, problem, fix = BAD_LINES[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CONVERSATION}, record])
    with pytest.raises(ConfigError) as info:
        conversations.check_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and problem in message and fix in message and "\n" not in message


def test_duplicate_ids_and_empty_files(tmp_path):
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "messages": CONVERSATION}, {"id": "a", "messages": CONVERSATION}])
    with pytest.raises(ConfigError, match="id 'a' appears 2 times"):
        conversations.check_file(dup)
    assert conversations.check_file(dup, unique_ids=False) == 2
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ConfigError, match="no conversations in the file"):
        conversations.check_file(tmp_path / "blank.jsonl")


# -- the generator -----------------------------------------------------------------------------
def test_generator_is_deterministic_multi_turn_and_held_out_by_conversation(tmp_path):
    a, b = chatgen.generate(300, seed=5), chatgen.generate(300, seed=5)
    assert a == b and a != chatgen.generate(300, seed=6)
    assert {c["topic"] for c in a} == set(chatgen.TOPICS)
    assert all(len(conversations.assistant_turns(c["messages"])) >= 2 for c in a)
    paths = chatgen.write_splits(tmp_path / "openai", 200, 40, seed=1)
    train = list(conversations.read_conversations(paths["train"]))
    held_out = list(conversations.read_conversations(paths["eval"]))
    opening = lambda c: next(m["content"] for m in c["messages"] if m["role"] == "user")  # noqa: E731
    assert len(train) == 200 and len(held_out) == 40
    assert not {opening(c) for c in train} & {opening(c) for c in held_out}
    assert not {c["id"] for c in train} & {c["id"] for c in held_out}
    shared = chatgen.write_splits(tmp_path / "sharegpt", 200, 40, seed=1, fmt="sharegpt")
    assert "conversations" in json.loads(shared["train"].read_text().splitlines()[0])
    assert list(conversations.read_conversations(shared["train"])) == train  # the same conversations either way
    # another writer of the same questions: answers in the styles asked for only
    leads = chatgen.generate(60, seed=1, styles=("lead",))
    assert all(m["content"].startswith(chatgen.LEADS) for c in leads for m in c["messages"] if m["role"] == "assistant")
    assert chatgen.generate(60, seed=1) == chatgen.generate(60, seed=1, styles=chatgen.STYLES)
    with pytest.raises(ValueError, match="unknown style 'poem'"):
        chatgen.generate(1, styles=("poem",))
    lines = []
    assert chatgen.main(["--out", str(tmp_path / "cli"), "--train", "20", "--eval", "5"], lines.append) == 0
    assert "wrote 20 train conversations" in lines[0]


# -- rendering and the loss mask through the dataset task ------------------------------------
def task_for(tmp_path, tokenizer, records, **options):
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import build_task

    path = write_jsonl(tmp_path / "conv.jsonl", records)
    return build_task(make_plugin_manager().registry, "dataset", {"path": str(path), **options}, tokenizer)


def masked_spans(tokenizer, batch, row=0):
    """The decoded text of each maximal run of loss-masked tokens of ``row``."""
    ids, mask = batch.input_ids_B_L[row].tolist(), batch.loss_mask_B_L[row].tolist()
    spans, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


@pytest.mark.parametrize("template,end_of_turn", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
@pytest.mark.parametrize("layout", ["openai", "sharegpt"])
def test_loss_mask_covers_exactly_the_assistant_turns(tmp_path, tokenizers, template, end_of_turn, layout):
    tok = tokenizers[template]
    three_turns = CONVERSATION + [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]
    record = {"messages": three_turns} if layout == "openai" else chatgen.to_sharegpt({"messages": three_turns})
    task = task_for(tmp_path, tok, [record], loss_turns="all", shuffle=False)
    prompt = task.take(0, 1, seed=0)[0][0]
    batch = reference_rollout([prompt], pad_id=0)
    answers = [m["content"] for m in three_turns if m["role"] == "assistant"]
    assert masked_spans(tok, batch) == [a + end_of_turn for a in answers]
    # nothing the user or system wrote is trained on, and every assistant token is
    trained = tok.decode([i for i, m in zip(batch.input_ids_B_L[0].tolist(), batch.loss_mask_B_L[0].tolist()) if m])
    for m in three_turns:
        assert (m["content"] in trained) == (m["role"] == "assistant")
    # the prompt is the conversation up to the first answer, exactly as the template writes it
    head = tok.apply_chat_template(three_turns[:2], tokenize=False, add_generation_prompt=True)
    assert list(prompt.prompt_ids) == list(tok(head, add_special_tokens=False)["input_ids"])
    assert prompt.meta["assistant_turns"] == 3
    # and the whole row is the whole conversation, ids unchanged
    full = tok.apply_chat_template(three_turns, tokenize=False)
    L = int(batch.attention_mask_B_L[0].sum())
    assert tok.decode(batch.input_ids_B_L[0, :L].tolist()) == full.rstrip("\n")


def test_last_turn_mode_trains_on_the_final_answer_only(tmp_path, tokenizers):
    tok = tokenizers["chatml"]
    task = task_for(tmp_path, tok, [SHAREGPT], shuffle=False)  # ShareGPT found under "conversations"
    prompt = task.take(0, 1, seed=0)[0][0]
    assert masked_spans(tok, reference_rollout([prompt], pad_id=0)) == ["42 times 2 is 84.<|im_end|>"]


def test_the_configured_template_switch_is_the_one_used(tmp_path, tokenizers):
    """SpecForge issue 296: thinking on at data time and off at serving time trains a drafter on
    text the target never writes. The switch in task.options.template_kwargs reaches both the
    prompt and the trained turns."""
    tok = tokenizers["chatml"]
    renders = {flag: tok.apply_chat_template(CONVERSATION, tokenize=False, enable_thinking=flag) for flag in (True, False)}
    assert renders[True] != renders[False]  # the switch changes the render
    rows = {}
    for name, kwargs in (("on", {"enable_thinking": True}), ("off", {"enable_thinking": False}), ("unset", {})):
        task = task_for(tmp_path, tok, [{"messages": CONVERSATION}], loss_turns="all", shuffle=False, template_kwargs=kwargs)
        prompt = task.take(0, 1, seed=0)[0][0]
        batch = reference_rollout([prompt], pad_id=0)
        rows[name] = (tok.decode(batch.input_ids_B_L[0].tolist()), masked_spans(tok, batch), prompt)
    assert rows["off"][0] == renders[False].rstrip("\n") and rows["on"][0] == renders[True].rstrip("\n")
    assert rows["off"][0].count("<think>\n\n</think>") == 2 and "<think>" not in rows["on"][0]
    assert rows["unset"][0] == rows["on"][0]  # this template thinks unless told not to
    # the empty think block is the generation prompt's fixed text, never trained on
    assert rows["off"][1] == rows["on"][1] == ["12 plus 30 is 42.<|im_end|>", "42 times 2 is 84.<|im_end|>"]
    generation_prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True,
                                                enable_thinking=False)
    assert tok.decode(list(rows["off"][2].prompt_ids)) == generation_prompt and generation_prompt.endswith("</think>\n\n")
    # the last-turn mode passes the switch through too
    task = task_for(tmp_path, tok, [{"messages": CONVERSATION}], shuffle=False, template_kwargs={"enable_thinking": False})
    assert tok.decode(list(task.take(0, 1, seed=0)[0][0].prompt_ids)).endswith("<think>\n\n</think>\n\n")


def test_a_template_that_rewrites_history_is_refused(tmp_path, tokenizers):
    tok = build_bpe_tokenizer(chatgen.corpus(50), vocab_size=300)
    # a template that drops every assistant turn but the last (as reasoning-stripping templates do)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                         "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    task = task_for(tmp_path, tok, [{"messages": CONVERSATION}], loss_turns="all")
    with pytest.raises(ConfigError, match="renders turn 2 differently.*loss_turns = \"last\""):
        task.take(0, 1, seed=0)


def test_held_out_conversations_and_long_ones(tmp_path, tokenizers):
    tok = tokenizers["chatml"]
    records = [{"messages": CONVERSATION[:2]}, {"messages": CONVERSATION}]  # one waits for its first answer
    task = task_for(tmp_path, tok, records, loss_turns="all", shuffle=False)
    waiting, full = task.take(0, 2, seed=0)[0]
    assert not waiting.reference_ids and tok.decode(list(waiting.prompt_ids)).endswith("<|im_start|>assistant\n")
    n = len(full.prompt_ids) + len(full.reference_ids)
    cut = task_for(tmp_path, tok, [{"messages": CONVERSATION}], loss_turns="all", max_prompt_tokens=len(full.prompt_ids),
                   max_new_tokens=n - len(full.prompt_ids) - 3, overlong="left_truncate")
    short = cut.take(0, 1, seed=0)[0][0]
    assert short.reference_ids == full.reference_ids[:-3] and short.reference_mask == full.reference_mask[:-3]
    assert cut.metrics()["data/truncated_prompts"] == 1


def test_lambda_mix_keeps_the_user_turns_of_a_reference(tmp_path, tokenizers):
    """Merging reference rows with sampled ones (GKD's lambda) keeps every token of a multi-turn
    reference and its mask, not only the trained ones."""
    from opdplug_local.models import merge_rollouts

    tok = tokenizers["chatml"]
    prompt = task_for(tmp_path, tok, [{"messages": CONVERSATION}], loss_turns="all").take(0, 1, seed=0)[0][0]
    ref = reference_rollout([prompt], pad_id=0)
    merged = merge_rollouts([prompt], [([0], ref)], pad_id=0)
    assert all((getattr(merged, f) == getattr(ref, f)).all() for f in ("input_ids_B_L", "loss_mask_B_L", "producer_B_L"))


# -- through the command line --------------------------------------------------------------------
def test_training_counts_exactly_the_assistant_tokens(tmp_path, tokenizers, capsys):
    """``opdplug train`` on multi-turn references (SFT, no teacher): the tokens trained in a step
    that visits every conversation once are exactly their assistant turns' tokens."""
    tok = tokenizers["chatml"]
    model = build_model_dir(tmp_path / "model", "qwen3", tok, hidden_size=32, num_hidden_layers=1)
    records = chatgen.generate(4, seed=9)
    write_jsonl(tmp_path / "conv.jsonl", records)
    options = {"path": str(tmp_path / "conv.jsonl"), "loss_turns": "all", "template_kwargs": {"enable_thinking": False}}
    config = {"run": {"output_dir": str(tmp_path / "run"), "steps": 1, "batch_size": 4, "progress": False},
              "student": {"path": str(model)}, "teacher": {"scorer": "none"}, "rollout": {"sampler": "reference"},
              "loss": {"support": "sampled", "estimator": "nll"}, "task": {"name": "dataset", "options": options}}
    (tmp_path / "sft.toml").write_text(dump_toml(config))
    assert main(["train", str(tmp_path / "sft.toml")]) == 0
    capsys.readouterr()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    task = task_for(tmp_path / "run", tok, records, **{k: v for k, v in options.items() if k != "path"})
    prompts = task.take(0, 4, seed=0)[0]
    assistant = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
    expected = sum(len(tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]) for a in assistant)
    assert row["tokens"] == sum(sum(p.reference_mask) for p in prompts) == expected



CLI_CASES = {
    "unknown_from": ([{"conversations": [{"from": "narrator", "value": "x"}]}], {}, ":3: ", "unknown role (ShareGPT 'from') 'narrator'"),
    "missing_key": ([{"text": "x"}], {}, ":3: ", "no 'messages' or 'conversations' key"),
    "empty": ([{"messages": []}], {}, ":3: ", "the conversation is empty"),
    "named_column": ([{"conversations": CONVERSATION}], {"messages_column": "messages"}, ":3: ", "no 'messages' key"),
    "pretty_json": (["[", json.dumps({"messages": CONVERSATION}), "]"], {}, "line 1 is not valid JSON",
                    "one complete JSON object per line"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_a_bad_conversation_file_is_one_line_and_exit_2(tmp_path, tokenizers, capsys, case):
    lines, options, where, problem = CLI_CASES[case]
    model = build_model_dir(tmp_path / "model", "qwen2", tokenizers["chatml"], hidden_size=32)
    first = [json.dumps({"messages": CONVERSATION})] * 2 if case != "pretty_json" else []
    write_jsonl(tmp_path / "conv.jsonl", first + lines)
    config = {"run": {"output_dir": str(tmp_path / "never"), "steps": 1, "progress": False},
              "student": {"path": str(model)}, "teacher": {"scorer": "self"},
              "task": {"name": "dataset", "options": {"path": str(tmp_path / "conv.jsonl"), "loss_turns": "all", **options}}}
    (tmp_path / "c.toml").write_text(dump_toml(config))
    capsys.readouterr()  # what building the model printed
    for command in ("check", "train"):
        code = main([command, str(tmp_path / "c.toml")])
        out = capsys.readouterr()
        assert code == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
        assert str(tmp_path / "conv.jsonl") in out.err and where in out.err and problem in out.err, out.err
        assert "Traceback" not in out.err
    assert not (tmp_path / "never").exists()
