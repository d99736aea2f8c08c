"""Training runs of the whole first-party stack (the local backend's tiny Hugging Face models,
SumChain, token losses): global normalization, exact resume, failures that write nothing,
LoRA checkpoints, the token metrics. The kernel's own loop tests (on a toy plugin) are in
tests/opdplug/test_loop.py."""
import types

import pytest
import torch

from opdplug.errors import TrainingError
from opdplug.hookspecs import hookimpl
from opdplug.loop import train
from opdplug.manager import make_plugin_manager
from opdplug.types import LossOutput
from opdplug_local.tasks import SumChain


def weights(model_dir):
    from opdplug_local.models import load_model

    return dict(load_model(str(model_dir), "x").named_parameters())


class FixedPool(SumChain):
    """Prompts drawn in order from one fixed pool, whatever the seed: two runs that split the
    same global batch differently see exactly the same sequences."""

    def __init__(self, tokenizer=None, options=None):
        super().__init__(tokenizer, options)
        self.pool = SumChain.prompts(self, 64, seed=0, split="train")
        self.next = 0

    def prompts(self, n, *, seed, split, length=None):
        if split != "train":
            return super().prompts(n, seed=seed, split=split, length=length)
        out = self.pool[self.next : self.next + n]
        self.next += n
        return out


fixed_pool_plugin = types.ModuleType("fixed_pool_plugin")
fixed_pool_plugin.opd_register_tasks = hookimpl(lambda register: register("fixed_pool", FixedPool))


def test_loss_invariant_to_micro_batching(run_config, tmp_path):
    finals = []
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        config, manager = run_config(
            make_plugin_manager([fixed_pool_plugin]),
            run={"output_dir": str(tmp_path / f"mb{batch_size}"), "batch_size": batch_size, "grad_accum": accum, "steps": 2, "lr": 1e-2},
            task={"name": "fixed_pool", "options": {"min_len": 1, "max_len": 4}},
            rollout={"sampler": "reference"},
        )
        result = train(config, manager)
        finals.append((weights(result.final_model_dir), result.history))
    (w0, h0), rest = finals[0], finals[1:]
    for w, h in rest:
        assert [m["tokens"] for m in h] == [m["tokens"] for m in h0]
        for name in w0:
            # Adam amplifies float32 summation-order noise where a gradient is ~0 (e.g. the
            # embedding row of a rare token): a few 1e-5 on single elements after 2 steps.
            torch.testing.assert_close(w[name], w0[name], rtol=0, atol=5e-5)
        assert h[0]["loss"] == pytest.approx(h0[0]["loss"], rel=1e-5)


def test_on_policy_run_is_a_function_of_the_global_batch(run_config, tmp_path):
    """The built-in task and sampler: how a global batch of 8 is cut into micro-batches changes
    neither the prompts nor the student's samples (per-row seeds) nor the update."""
    runs = []
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        config, manager = run_config(run={"output_dir": str(tmp_path / f"op{batch_size}"), "batch_size": batch_size,
                                          "grad_accum": accum, "steps": 2, "lr": 1e-3})
        result = train(config, manager)
        runs.append((weights(result.final_model_dir), result.history))
    (w0, h0), rest = runs[0], runs[1:]
    for w, h in rest:
        for key in ("tokens", "rollout/sequence_tokens_total", "rollout/truncated"):
            assert [m[key] for m in h] == [m[key] for m in h0], key  # the same samples
        assert [m["loss"] for m in h] == pytest.approx([m["loss"] for m in h0], rel=1e-5)
        for name in w0:
            torch.testing.assert_close(w[name], w0[name], rtol=0, atol=1e-5)


def test_killed_run_resumes_to_the_same_weights(run_config, tmp_path):
    common = {"steps": 6, "checkpoint_every": 2, "lr": 1e-2}
    config, manager = run_config(run={**common, "output_dir": str(tmp_path / "straight")})
    straight = train(config, manager)

    config, manager = run_config(run={**common, "output_dir": str(tmp_path / "killed"), "stop_after": 3})
    killed = train(config, manager)
    assert killed.final_model_dir is None and killed.steps_done == 3  # step 3 was lost: last checkpoint is 2
    config, manager = run_config(run={**common, "output_dir": str(tmp_path / "killed")})
    resumed = train(config, manager)
    assert [m["step"] for m in resumed.history] == [2, 3, 4, 5]
    a, b = weights(straight.final_model_dir), weights(resumed.final_model_dir)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [m["loss"] for m in straight.history[2:]] == [m["loss"] for m in resumed.history]


def test_nan_loss_stops_without_checkpoint(run_config, tmp_path):
    plugin = types.ModuleType("nan_plugin")

    @hookimpl
    def opd_loss(ctx, batch, scores, credit, student):
        if not torch.is_grad_enabled():
            return None  # the pre-flight self-test (no grad) sees the real loss
        return LossOutput(loss_sum=student.hidden_B_L_H.sum() * float("nan"), num_tokens=1)

    plugin.opd_loss = opd_loss
    config, manager = run_config(make_plugin_manager([plugin]), run={"checkpoint_every": 1, "output_dir": str(tmp_path / "nan")},
                                 loss={"support": "sampled", "estimator": "k2"})
    with pytest.raises(TrainingError, match="the loss is not finite at step 0"):
        train(config, manager)
    assert not (tmp_path / "nan" / "checkpoints").exists()


def test_lora_student_checkpoints_only_the_adapter(run_config, tmp_path):
    from safetensors.torch import load_file

    config, manager = run_config(student={"lora_r": 4}, run={"output_dir": str(tmp_path / "lora")})
    result = train(config, manager)
    saved = load_file(str(tmp_path / "lora" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    merged = weights(result.final_model_dir)
    assert not any("lora" in k for k in merged)  # exported merged, a plain causal LM


def test_metrics_jsonl_and_tensorboard(run_config, tmp_path):
    import json

    config, manager = run_config(run={"output_dir": str(tmp_path / "tb"), "tensorboard": True})
    train(config, manager)
    lines = [json.loads(l) for l in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1]
    for key in ("reverse_kl", "forward_kl", "student_entropy", "teacher_entropy", "topk_overlap", "tail_mass",
                "clamped", "rollout/truncated", "loss", "tokens"):
        assert key in lines[0], key
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
