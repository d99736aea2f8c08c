"""The ``dataset`` task on models that stand for a user's: byte-level BPE tokenizer with a ChatML
template and no pad token, Qwen2 / Qwen3 / Llama architectures, prompts in JSONL, Parquet and
``save_to_disk`` form. check, train, kill -9 and resume to bit-identical weights, eval, generate,
and every kind of bad input as one line with nothing written."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opdplug.cli import main
from opdplug.config import dump_toml
from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
from opdplug_local.wordproblems import generate

ROWS = generate(120, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three model directories sharing one BPE tokenizer, and the same prompts in three formats."""
    import datasets

    root = tmp_path_factory.mktemp("byo")
    tok = build_bpe_tokenizer([r["prompt"] + " " + r["solution"] for r in ROWS], vocab_size=400)
    assert tok.pad_token_id is None and tok.chat_template
    dirs = {
        "qwen2": build_model_dir(root / "qwen2", "qwen2", tok, hidden_size=48, seed=1),
        "qwen3": build_model_dir(root / "qwen3", "qwen3", tok, hidden_size=48, seed=2),
        "llama": build_model_dir(root / "llama", "llama", tok, hidden_size=32, seed=3),
    }
    train, held_out = ROWS[:100], ROWS[100:]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    datasets.Dataset.from_list(train).to_parquet(str(root / "train.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train)}).save_to_disk(str(root / "saved"))
    return root, dirs, tok


def write_config(root: Path, name: str, dirs: dict, *, data: str, student="llama", teacher="qwen2", steps=4, **task):
    config = {
        "run": {"output_dir": str(root / "runs" / name), "steps": steps, "batch_size": 4, "checkpoint_every": 1,
                "progress": False, "lr": 3e-3, "threads": 1},  # one thread: the in-process and the subprocess runs
                # must not differ in summation order, whatever earlier tests set torch to
        "student": {"path": str(dirs[student])},
        "teacher": {"path": str(dirs[teacher])},
        "task": {"name": "dataset", "options": {"path": str(root / data), "eval_path": str(root / "eval.jsonl"),
                                                "completion_column": "solution", "verifier": "final_number",
                                                "max_new_tokens": 12, **task}},
        "loss": {"support": "full"},
    }
    path = root / f"{name}.toml"
    path.write_text(dump_toml(config))
    return path


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("data", ["train.jsonl", "train.parquet", "saved"])
def test_check_train_eval_generate(world, data, capsys):
    root, dirs, tok = world
    name = "fmt-" + data.replace(".", "-")
    path = write_config(root, name, dirs, data=data)
    code, out, _ = run_cli(["check", str(path)], capsys)
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and report["tokenizers"] == "identical" and abs(report["self_loss_per_token"]) < 1e-5
    code, out, _ = run_cli(["train", str(path)], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["steps"] == 4
    rows = [json.loads(line) for line in (root / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and all("rollout/truncated" in r for r in rows)
    code, out, _ = run_cli(["eval", str(root / "runs" / name), "-n", "8", "--json"], capsys)
    assert code == 0 and json.loads(out)["prompts"] == 8 and 0.0 <= json.loads(out)["accuracy"] <= 1.0
    gen = root / f"{name}.jsonl"
    code, out, _ = run_cli(["generate", str(root / "runs" / name), "--out", str(gen), "-n", "5"], capsys)
    lines = [json.loads(line) for line in gen.read_text().splitlines()]
    assert code == 0 and len(lines) == 5
    assert all(r["prompt"].startswith("<|im_start|>user\n") and "answer" in r["meta"] for r in lines)
    assert all(r["reward"] in (0.0, 1.0) for r in lines)


def test_prompts_are_rendered_with_the_template_and_references_end_the_turn(world):
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import build_task

    root, dirs, tok = world
    manager = make_plugin_manager()
    task = build_task(manager.registry, "dataset", {"path": str(root / "train.jsonl"), "completion_column": "solution",
                                                    "system_prompt": "Answer briefly.",
                                                    "template_kwargs": {"enable_thinking": False}}, tok)
    (p,) = task.prompts(1, seed=0, split="eval")  # no held-out split: the first training row
    text = tok.decode(list(p.prompt_ids))
    assert text == tok.apply_chat_template(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": ROWS[0]["prompt"]}],
        tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # the switch reached the template
    assert tok.decode(list(p.reference_ids)) == ROWS[0]["solution"] + "<|im_end|>"
    assert p.meta["answer"] == ROWS[0]["answer"] and p.meta["topic"] == ROWS[0]["topic"]
    privileged = tok.decode(list(p.privileged_prompt_ids))
    assert ROWS[0]["answer"] in privileged and privileged.endswith(text.split("<|im_start|>user")[-1])


def test_the_stream_is_seeded_per_epoch_and_resumable_by_position(world):
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import build_task

    root, _, tok = world
    task = build_task(make_plugin_manager().registry, "dataset", {"path": str(root / "train.jsonl"), "eval_fraction": 0.1}, tok)
    n = len(task.train)
    assert n == 90 and task.eval_size() == 10
    first, pos = task.take(0, n, seed=7)
    second, _ = task.take(pos, n, seed=7)
    key = lambda p: p.prompt_ids  # noqa: E731
    assert sorted(map(key, first)) == sorted(map(key, second)) and list(map(key, first)) != list(map(key, second))
    again, _ = task.take(37, 5, seed=7)
    assert list(map(key, again)) == list(map(key, first[37:42]))
    held_out = {p.prompt_ids for p in task.prompts(100, seed=0, split="eval")}
    assert len(held_out) == 10 and not held_out & {p.prompt_ids for p in first}


@pytest.mark.parametrize("student,teacher", [("qwen3", "qwen2"), ("llama", "qwen3")])
def test_architectures_distill_each_other(world, student, teacher, capsys):
    root, dirs, _ = world
    path = write_config(root, f"arch-{student}-{teacher}", dirs, data="train.jsonl", student=student, teacher=teacher, steps=2)
    code, out, _ = run_cli(["train", str(path)], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["steps"] == 2


def final_state(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.mark.parametrize("data", ["train.jsonl", "train.parquet", "saved"])
def test_kill_9_then_resume_gives_bit_identical_weights(world, capsys, data):
    root, dirs, _ = world
    steps = 12
    tag = data.replace(".", "-")
    straight = write_config(root, f"straight-{tag}", dirs, data=data, steps=steps)
    killed = write_config(root, f"killed-{tag}", dirs, data=data, steps=steps)
    assert run_cli(["train", str(straight)], capsys)[0] == 0
    proc = subprocess.Popen([sys.executable, "-m", "opdplug.cli", "train", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = root / "runs" / f"killed-{tag}" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step-000003":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "runs" / f"killed-{tag}" / "final").exists(), "the run finished before it could be killed"
    assert run_cli(["train", str(killed)], capsys)[0] == 0
    a, b = final_state(root / "runs" / f"straight-{tag}"), final_state(root / "runs" / f"killed-{tag}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps_logged = [json.loads(line)["step"] for line in (root / "runs" / f"killed-{tag}" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(steps))


def bad(world, capsys, tmp_path, **task):
    root, dirs, _ = world
    out_dir = tmp_path / "never"
    config = {"run": {"output_dir": str(out_dir), "steps": 1, "batch_size": 2, "progress": False},
              "student": {"path": str(dirs["llama"])}, "teacher": {"path": str(dirs["qwen2"])},
              "task": {"name": "dataset", "options": task}}
    path = tmp_path / "bad.toml"
    path.write_text(dump_toml(config))
    for command in ("check", "train"):
        code, out, err = run_cli([command, str(path)], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert not out_dir.exists()
    return err.strip()


def test_bad_input_is_one_line_and_writes_nothing(world, capsys, tmp_path):
    root = world[0]
    assert "'question' is not a column" in bad(world, capsys, tmp_path, path=str(root / "train.jsonl"), prompt_column="question")
    (tmp_path / "empty.jsonl").write_text("")
    assert "is empty" in bad(world, capsys, tmp_path, path=str(tmp_path / "empty.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",\n')
    assert "line 3 is not valid JSON" in bad(world, capsys, tmp_path, path=str(tmp_path / "broken.jsonl"))
    rows = [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "wizard", "content": "x"}]}]
    (tmp_path / "roles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "unknown role 'wizard'" in bad(world, capsys, tmp_path, path=str(tmp_path / "roles.jsonl"))
    assert "does not exist" in bad(world, capsys, tmp_path, path=str(tmp_path / "nope.jsonl"))


def test_messages_need_a_chat_template(world, capsys, tmp_path):
    root, dirs, tok = world
    bare = build_bpe_tokenizer([r["prompt"] for r in ROWS], vocab_size=400, template=None)
    model_dir = build_model_dir(tmp_path / "bare", "llama", bare, hidden_size=32)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"run": {"output_dir": str(tmp_path / "never"), "steps": 1, "progress": False},
              "student": {"path": str(model_dir)}, "teacher": {"scorer": "self"},
              "task": {"name": "dataset", "options": {"path": str(tmp_path / "chat.jsonl")}}}
    (tmp_path / "c.toml").write_text(dump_toml(config))
    code, out, err = run_cli(["check", str(tmp_path / "c.toml")], capsys)
    assert code == 2 and "no chat template" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_over_long_prompts_are_dropped_and_counted(world):
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import build_task

    root, _, tok = world
    registry = make_plugin_manager().registry
    lengths = sorted(len(p.prompt_ids) for p in build_task(registry, "dataset", {"path": str(root / "train.jsonl")}, tok)
                     .prompts(100, seed=0, split="eval"))
    limit = lengths[len(lengths) // 2]
    task = build_task(registry, "dataset", {"path": str(root / "train.jsonl"), "max_prompt_tokens": limit}, tok)
    prompts, position = task.take(0, 20, seed=0)
    assert len(prompts) == 20 and position > 20 and all(len(p.prompt_ids) <= limit for p in prompts)
    assert task.metrics()["data/dropped_prompts"] == position - 20
    cut = build_task(registry, "dataset", {"path": str(root / "train.jsonl"), "max_prompt_tokens": 5,
                                           "overlong": "left_truncate"}, tok)
    prompts, position = cut.take(0, 3, seed=0)
    assert position == 3 and all(len(p.prompt_ids) == 5 for p in prompts) and cut.metrics()["data/truncated_prompts"] == 3


def test_bfloat16_models_train(world, capsys):
    root, dirs, _ = world
    path = write_config(root, "bf16", dirs, data="train.jsonl", steps=2)
    text = path.read_text().replace('[student]\n', '[student]\ndtype = "bfloat16"\n').replace(
        '[teacher]\n', '[teacher]\ndtype = "bfloat16"\nattn_implementation = "eager"\n')
    path.write_text(text)
    code, out, _ = run_cli(["train", str(path)], capsys)
    assert code == 0, out
    weights = final_state(root / "runs" / "bf16")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_a_sentencepiece_tokenizer_with_bos_and_left_padding(world, tmp_path, capsys):
    from opdplug.testing.models import build_sentencepiece_tokenizer

    root, _, _ = world
    tok = build_sentencepiece_tokenizer([r["prompt"] + " " + r["solution"] for r in ROWS], vocab_size=400)
    assert tok.padding_side == "left" and tok.pad_token_id is None and tok.bos_token == "<s>"
    dirs = {"llama": build_model_dir(tmp_path / "s", "llama", tok, hidden_size=32, seed=1),
            "qwen2": build_model_dir(tmp_path / "t", "llama", tok, hidden_size=48, seed=2)}
    (tmp_path / "eval.jsonl").write_text((root / "eval.jsonl").read_text())
    path = write_config(tmp_path, "sp", dirs, data=str(root / "train.jsonl"), steps=2)
    code, out, _ = run_cli(["train", str(path)], capsys)
    assert code == 0, out
    gen = tmp_path / "sp.jsonl"
    assert run_cli(["generate", str(tmp_path / "runs" / "sp"), "--out", str(gen), "-n", "3"], capsys)[0] == 0
    rows = [json.loads(line) for line in gen.read_text().splitlines()]
    assert all(r["prompt"].startswith("<s><|im_start|>user") and r["prompt"].count("<s>") == 1 for r in rows)


def test_a_qwen2_directory_keeps_the_tokenizer_it_was_saved_with(world):
    from opdplug_local.models import load_tokenizer

    root, dirs, tok = world
    text = "Tom has 13 apples and buys 35 more. 13 + 35 = 48."
    loaded = {arch: load_tokenizer(str(d)) for arch, d in dirs.items()}
    # transformers' AutoTokenizer would give the Qwen2 directory Qwen2Tokenizer, which splits digits
    assert {a: t(text, add_special_tokens=False)["input_ids"] for a, t in loaded.items()} == \
        {a: tok(text, add_special_tokens=False)["input_ids"] for a in dirs}


def test_same_vocabulary_split_differently_is_one_line(world, tmp_path, capsys):
    import copy

    from tokenizers import pre_tokenizers

    root, dirs, tok = world
    splitter = copy.deepcopy(tok)
    splitter.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert splitter.get_vocab() == tok.get_vocab()
    teacher = build_model_dir(tmp_path / "teacher", "llama", splitter, hidden_size=32)
    path = write_config(tmp_path, "split", {**dirs, "qwen2": teacher}, data=str(root / "train.jsonl"))
    code, out, err = run_cli(["check", str(path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "same vocabulary but split text differently" in err
