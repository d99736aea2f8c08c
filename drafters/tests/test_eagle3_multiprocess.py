"""An EAGLE-3 head trained by two processes under ``accelerate launch`` (gloo DDP on the CPU)
gives what one process with the same global batch gives: the core loop's multi-process
arithmetic, with the EAGLE-3 stages (target samples per global row, feature capture, TTT loss
through the DDP-wrapped head). The ``multiprocess`` lane: ``make test-multiprocess``."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opdplug.config import dump_toml
from opdplug_drafters.eagle3.toy import toy_target

pytestmark = pytest.mark.multiprocess

STEPS = 3


def accelerate_launch(num_processes: int) -> list[str]:
    """The launch line the README gives (``--cpu`` would silently run one process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def train_cli(launch: list[str], config: dict, path: Path) -> dict:
    path.write_text(dump_toml(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*launch, "-m", "opdplug.cli", "train", str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only the main process prints
    return json.loads(lines[0])


def test_two_processes_train_the_head_one_process_trains(tmp_path):
    target = tmp_path / "target"
    toy_target(num_layers=4, directory=target)

    def config(name: str, batch_size: int) -> dict:
        return {
            "run": {"output_dir": str(tmp_path / name), "steps": STEPS, "batch_size": batch_size, "grad_accum": 2,
                    "lr": 1e-2, "device": "cpu", "threads": 1, "progress": False},
            "teacher": {"path": str(target)},
            "task": {"name": "sumchain", "options": {"max_len": 4}},
            "drafter": {"kind": "eagle3", "eagle3": {"ttt_steps": 3, "draft_vocab_size": 20, "max_new_tokens": 8,
                                                     "vocab_prompts": 16, "eval_prompts": 4, "eval_every": 3}},
        }

    one = train_cli([sys.executable], config("one", 8), tmp_path / "one.toml")
    two = train_cli(accelerate_launch(2), config("two", 4), tmp_path / "two.toml")
    assert one["processes"] == 1 and two["processes"] == 2
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    # The same prompts and the same target samples on every row, wherever it ran...
    for key in ("tokens", "rollout/sequence_tokens_total", "rollout/completion_tokens"):
        assert [m[key] for m in rows["two"]] == [m[key] for m in rows["one"]], key
    # ...the same loss and proxies up to float summation order (gradients all-reduced by DDP)...
    for key in ("loss", "grad_norm", "ttt/accept_len", "ttt/ce_2"):
        assert [m[key] for m in rows["two"]] == pytest.approx([m[key] for m in rows["one"]], rel=1e-4), key
    assert rows["two"][-1]["eval/loss"] == pytest.approx(rows["one"][-1]["eval/loss"], rel=1e-4)  # main process only
    # ...and the same head.
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
