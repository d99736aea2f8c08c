"""Two processes under ``accelerate launch`` give what one process with the same global batch gives.

The ``multiprocess`` lane (``make test-multiprocess``; deselected from ``make test``): each run is
``accelerate launch --multi_gpu --num_processes 2 ... -m opdplug.cli train`` on the CPU (gloo DDP),
on the built-in task with the on-policy sampler, a tiny (untrained: only equality matters here)
teacher and the full-vocabulary reverse KL; weights compared relative to the update (see
``assert_same_update``). About a minute and a half on 2 idle cores.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opdplug.config import dump_toml

pytestmark = pytest.mark.multiprocess

STEPS = 4


def accelerate_launch(num_processes: int) -> list[str]:
    """The launch line the README gives (``--cpu`` would silently run one process)."""
    with socket.socket() as s:  # a free port: a finished run's port may still be in TIME_WAIT
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def train_cli(launch: list[str], config: dict, path: Path) -> dict:
    """Run ``opdplug train`` on ``config`` under ``launch``; return the summary line it prints."""
    path.write_text(dump_toml(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*launch, "-m", "opdplug.cli", "train", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only the main process prints
    return json.loads(lines[0])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path, final: str = "final") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / final / "model.safetensors"))


def assert_same_update(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                       rel: float = 2e-3) -> None:
    """``b`` made the update ``a`` made, to ``rel`` of each tensor's largest update.

    Why relative to the update, not to an absolute 1e-5: the all-reduce sums the gradient in
    another order than one process does, and AdamW divides each coordinate by its own RMS, so a
    coordinate whose gradient is at round-off level moves by a round-off-dependent part of lr
    (measured: 1.9e-5 on updates of 3e-2, transformers 5.25). A wrong split of the batch moves
    whole tensors by the order of the update itself."""
    assert a.keys() == b.keys()
    for name in a:
        update = float((a[name] - start[name]).abs().max())
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=rel * update + 1e-7, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models):
    """One process (batch 8 x 2 micro-batches) and two (batch 4 x 2 each): the same global batch.
    Plus a two-process run killed after 3 steps and resumed."""
    root = tmp_path_factory.mktemp("multiprocess")

    def config(name: str, batch_size: int, **run) -> dict:
        return {
            "run": {"output_dir": str(root / name), "steps": STEPS, "batch_size": batch_size, "grad_accum": 2,
                    "lr": 1e-2, "device": "cpu", "threads": 1, "progress": False, "checkpoint_every": 2, **run},
            "student": {"path": str(tiny_models.student_dir)},
            "teacher": {"path": str(tiny_models.teacher_dir)},
            "task": {"options": {"max_len": 4}},
        }

    out = {
        "one": train_cli([sys.executable], config("one", 8), root / "one.toml"),
        "two": train_cli(accelerate_launch(2), config("two", 4), root / "two.toml"),
        "killed": train_cli(accelerate_launch(2), config("resumed", 4, stop_after=3), root / "killed.toml"),
        "resumed": train_cli(accelerate_launch(2), config("resumed", 4), root / "resumed.toml"),
        "student_dir": Path(tiny_models.student_dir),
    }
    return root, out


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    root, out = runs
    one, two = metrics(root / "one"), metrics(root / "two")
    assert out["one"]["processes"] == 1 and out["two"]["processes"] == 2
    assert [m["processes"] for m in one] == [1] * STEPS and [m["processes"] for m in two] == [2] * STEPS
    # The same prompts and the same samples: every row-level count agrees exactly...
    for key in ("tokens", "rollout/sequence_tokens_total", "rollout/truncated", "rollout/completion_tokens"):
        assert [m[key] for m in two] == [m[key] for m in one], key
    # ...and the losses up to float summation order (the gradient is all-reduced over processes).
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-4)
    assert [m["grad_norm"] for m in two] == pytest.approx([m["grad_norm"] for m in one], rel=1e-4)
    a, b = final_weights(root / "one"), final_weights(root / "two")
    start = final_weights(out["student_dir"], final="")
    assert max(float((a[n] - w).abs().max()) for n, w in start.items()) > 1e-2  # it did learn something
    assert_same_update(a, b, start)


def test_two_processes_resume_to_the_same_weights(runs):
    root, out = runs
    assert out["killed"]["final_model"] is None and out["killed"]["steps"] == 3
    assert out["resumed"]["steps"] == STEPS and out["resumed"]["processes"] == 2
    logged = metrics(root / "resumed")
    assert [m["step"] for m in logged] == [0, 1, 2, 3]  # one row per step: the redone step 2 replaced its row
    straight = metrics(root / "two")
    assert [m["loss"] for m in logged[-2:]] == [m["loss"] for m in straight[2:]]
    a, b = final_weights(root / "two"), final_weights(root / "resumed")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_dataset_stream_gives_two_processes_what_it_gives_one(tmp_path):
    """The dataset task's stream (its position carried by the loop) is split over processes as
    SumChain's prompts are: one process with the global batch, two with half each, same run."""
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir

    rows = [{"prompt": f"What is {a} plus {b}?", "solution": f"{a} + {b} = {a + b}.", "answer": str(a + b)}
            for a in range(8) for b in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_bpe_tokenizer([r["prompt"] + " " + r["solution"] for r in rows], vocab_size=300)
    student = build_model_dir(tmp_path / "student", "llama", tok, hidden_size=32, seed=1)
    teacher = build_model_dir(tmp_path / "teacher", "qwen2", tok, hidden_size=32, seed=2)

    def config(name: str, batch_size: int) -> dict:
        return {
            "run": {"output_dir": str(tmp_path / name), "steps": 3, "batch_size": batch_size, "grad_accum": 2,
                    "lr": 1e-2, "device": "cpu", "threads": 1, "progress": False},
            "student": {"path": str(student)}, "teacher": {"path": str(teacher)},
            "task": {"name": "dataset", "options": {"path": str(tmp_path / "train.jsonl"), "max_new_tokens": 8}},
        }

    train_cli([sys.executable], config("one", 8), tmp_path / "one.toml")
    train_cli(accelerate_launch(2), config("two", 4), tmp_path / "two.toml")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert {m["processes"] for m in one} == {1} and {m["processes"] for m in two} == {2}
    for key in ("tokens", "rollout/sequence_tokens_total", "rollout/completion_tokens"):
        assert [m[key] for m in two] == [m[key] for m in one], key
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-4)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    start = final_weights(student, final="")
    assert max(float((a[n] - w).abs().max()) for n, w in start.items()) > 1e-3  # it did learn something
    assert_same_update(a, b, start)


def test_group_sampling_gives_two_processes_what_it_gives_one(tmp_path):
    """GRPO with 4 samples per prompt (``rollout.samples_per_prompt``): a group's rows sit on one
    process, each row samples from its own seed, and the group-normalised outcome advantage (a
    regex verifier that some random completions pass) makes the same update on one process with
    the global batch as on two with half each."""
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir

    rows = [{"prompt": f"What is {a} plus {b}?", "solution": f"{a} + {b} = {a + b}.", "answer": str(a + b)}
            for a in range(8) for b in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_bpe_tokenizer([r["prompt"] + " " + r["solution"] for r in rows], vocab_size=300)
    student = build_model_dir(tmp_path / "student", "llama", tok, hidden_size=32, seed=1)

    def config(name: str, batch_size: int) -> dict:
        return {
            "run": {"output_dir": str(tmp_path / name), "steps": 3, "batch_size": batch_size, "grad_accum": 2,
                    "lr": 1e-2, "device": "cpu", "threads": 1, "progress": False},
            "student": {"path": str(student)}, "teacher": {"scorer": "none"},
            "rollout": {"samples_per_prompt": 4, "temperature": 1.5},
            "loss": {"support": "sampled", "estimator": "k1", "update": "advantage"},
            "credit": {"scheme": "grpo", "verifier": "task"},
            "task": {"name": "dataset", "options": {"path": str(tmp_path / "train.jsonl"), "max_new_tokens": 8,
                                                    "verifier": "regex", "verifier_options": {"pattern": "[0-4]"}}},
        }

    train_cli([sys.executable], config("one", 8), tmp_path / "one.toml")
    train_cli(accelerate_launch(2), config("two", 4), tmp_path / "two.toml")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert {m["processes"] for m in two} == {2}
    rewards = [m["rollout/reward"] for m in one]
    assert any(0 < r < 1 for r in rewards), rewards  # some groups have rewards to normalise
    for key in ("tokens", "rollout/sequence_tokens_total", "rollout/reward"):
        assert [m[key] for m in two] == [m[key] for m in one], key
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-4, abs=1e-7)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    start = final_weights(student, final="")
    assert max(float((a[n] - w).abs().max()) for n, w in start.items()) > 1e-3  # it did learn something
    assert_same_update(a, b, start)
