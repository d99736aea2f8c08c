"""Drafters trained on conversation data through the core loop: an EAGLE-3 head (``data =
"rollout"`` with the reference sampler) and a DistillSpec drafter on a Qwen2 target with a
byte-level BPE tokenizer, each trained on exactly the assistant tokens of multi-turn
conversations (the dataset task's loss mask), never on user or system text."""
from __future__ import annotations

import json

import pytest

from opdplug.cli import main
from opdplug.config import dump_toml
from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
from opdplug_local import chatgen

N = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("convdraft")
    tok = build_bpe_tokenizer(chatgen.corpus(200), vocab_size=360)
    target = build_model_dir(root / "target", "qwen2", tok, hidden_size=32, num_hidden_layers=4, seed=4)
    drafter = build_model_dir(root / "drafter", "qwen2", tok, hidden_size=32, num_hidden_layers=1, seed=5)
    records = chatgen.generate(N, seed=3)
    (root / "conv.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assistant = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
    # what the model writes in each assistant turn: its text, after the empty think block the
    # generation prompt holds, and the end-of-turn token
    expected = sum(len(tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]) for a in assistant)
    return root, target, drafter, expected


def task_options(root):
    return {"path": str(root / "conv.jsonl"), "loss_turns": "all", "template_kwargs": {"enable_thinking": False},
            "max_new_tokens": 8, "shuffle": False}


def first_step(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_eagle3_head_trains_on_exactly_the_assistant_turns(world, tmp_path, capsys):
    root, target, _, expected = world
    config = {"run": {"output_dir": str(tmp_path / "e3"), "steps": 1, "batch_size": N, "progress": False},
              "teacher": {"path": str(target)}, "rollout": {"sampler": "reference"},
              "task": {"name": "dataset", "options": task_options(root)},
              "drafter": {"kind": "eagle3", "draft_tokens": 2, "eval_prompts": 2, "eval_batch_size": 2,
                          "eval_temperatures": [0.0], "eagle3": {"data": "rollout", "ttt_steps": 2, "eval_every": 0,
                                                                 "max_new_tokens": 4, "eval_prompts": 2}}}
    (tmp_path / "e3.toml").write_text(dump_toml(config))
    assert main(["drafter", "train", str(tmp_path / "e3.toml"), "--json"]) == 0
    capsys.readouterr()
    assert first_step(tmp_path / "e3")["tokens"] == expected


def test_distillspec_drafter_trains_on_exactly_the_assistant_turns(world, tmp_path, capsys):
    root, target, drafter, expected = world
    config = {"run": {"output_dir": str(tmp_path / "ds"), "steps": 1, "batch_size": N, "progress": False},
              "student": {"path": str(drafter)}, "teacher": {"path": str(target), "scorer": "local"},
              "rollout": {"sampler": "reference"}, "loss": {"support": "full", "divergence": "forward_kl"},
              "task": {"name": "dataset", "options": task_options(root)},
              "drafter": {"kind": "standalone", "draft_tokens": 2, "eval_every": 0, "eval_prompts": 2,
                          "eval_batch_size": 2, "eval_temperatures": [0.0]}}
    (tmp_path / "ds.toml").write_text(dump_toml(config))
    assert main(["drafter", "train", str(tmp_path / "ds.toml"), "--json"]) == 0
    capsys.readouterr()
    assert first_step(tmp_path / "ds")["tokens"] == expected
