"""The rollout's prefill reused as the prompt part of the student's training forward: the same
samples, the same hidden states and gradients as the full forward, the same training run, and
the full forward wherever reuse does not apply."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from opdplug_local import fastpath, prefill_reuse, sampling, tiny
from opdplug_local.models import model_rollout
from opdplug_local.tasks import SumChain
from opdplug.types import PRODUCER_STUDENT


@pytest.fixture(scope="module")
def task():
    return SumChain()


def _rollout(task, model, keep: bool, budgets=(3, 9, 9, 9, 9)):
    prompts = task.prompts(5, seed=3, split="train")
    prompts[0] = dataclasses.replace(prompts[0], prompt_ids=prompts[0].prompt_ids[:2])  # mixed prompt lengths
    return model_rollout(model, prompts, producer=PRODUCER_STUDENT, max_new_tokens=list(budgets), temperature=1.0,
                         top_p=1.0, tokenizer=task.tokenizer, generator=None, on_policy=True, row_seeds=list(range(5)),
                         keep_prefill_graph=keep)


@pytest.fixture(autouse=True)
def _always_reuse(monkeypatch):
    """SumChain's prompts are shorter than its completions, where reuse does not pay."""
    monkeypatch.setattr(prefill_reuse, "PROMPT_SHARE", 0.0)


def test_reuse_is_asked_for_only_where_the_prompts_dominate(task, monkeypatch):
    monkeypatch.setattr(prefill_reuse, "PROMPT_SHARE", 0.5)
    model = tiny.build_model("tiny", task.tokenizer, seed=1)
    assert prefill_reuse.eligible(model, 130, 24) and not prefill_reuse.eligible(model, 20, 27)
    assert prefill_reuse.take(_rollout(task, model, keep=True, budgets=[27] * 5).input_ids_B_L) is None  # 44 prompt tokens, 135 new
    assert prefill_reuse.take(_rollout(task, model, keep=True).input_ids_B_L) is not None  # 44 prompt tokens, 39 new
    assert not prefill_reuse.eligible(tiny.build_model("tiny", task.tokenizer, seed=1).requires_grad_(False), 130, 24)


@pytest.mark.parametrize("fused", [True, False])
def test_hidden_states_and_gradients_equal_the_full_forward(task, monkeypatch, fused):
    if not fused:
        monkeypatch.setattr(fastpath, "FUSE_PER_CALL_BYTES", 0)
    model = tiny.build_model("tiny", task.tokenizer, seed=1)
    reference, batch = _rollout(task, model, keep=False), _rollout(task, model, keep=True)
    assert torch.equal(reference.input_ids_B_L, batch.input_ids_B_L)  # the recorded prefill samples the same
    assert torch.equal(reference.sampling_logprobs_B_L, batch.sampling_logprobs_B_L)
    assert prefill_reuse.take(reference.input_ids_B_L) is None
    graph = prefill_reuse.take(batch.input_ids_B_L)
    assert graph is not None and prefill_reuse.take(batch.input_ids_B_L) is None  # taken once
    reused = prefill_reuse.completion_hidden(model, graph, batch.input_ids_B_L, batch.attention_mask_B_L, batch.prompt_lens_B)
    full = sampling.final_hidden(model, batch.input_ids_B_L, batch.attention_mask_B_L, needed_B_L=batch.loss_mask_B_L)
    rows = batch.loss_mask_B_L.bool()
    torch.testing.assert_close(reused[rows], full[rows], atol=2e-6, rtol=1e-5)
    assert not reused[~rows].any()
    weights = torch.randn(reused[rows].shape, generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad((reused[rows] * weights).sum(), params, allow_unused=True)
    want = torch.autograd.grad((full[rows] * weights).sum(), params, allow_unused=True)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        assert (g is None) == (w is None), name
        if w is not None:
            # float round-off of different product shapes, relative to the gradient's scale
            assert float((g - w).abs().max()) <= 1e-5 * float(w.abs().max()) + 1e-9, name


def test_a_batch_that_is_not_the_sampled_one_finds_no_graph(task):
    model = tiny.build_model("tiny", task.tokenizer, seed=1)
    batch = _rollout(task, model, keep=True)
    assert prefill_reuse.take(batch.input_ids_B_L.clone()) is None
    assert prefill_reuse.take(batch.input_ids_B_L) is not None
    graph_ids = _rollout(task, model, keep=True).input_ids_B_L
    key = id(graph_ids)
    del graph_ids
    assert key not in prefill_reuse._GRAPHS  # freed with its batch


def _train(tmp_path, tiny_models, name, **run):
    from opdplug.config import parse_config
    from opdplug.loop import train
    from opdplug.manager import make_plugin_manager

    manager = make_plugin_manager()
    config = parse_config({
        "run": {"output_dir": str(tmp_path / name), "steps": 3, "batch_size": 4, "lr": 3e-3, "progress": False,
                "resume": False, **run},
        "student": {"path": str(tiny_models.student_dir)},
        "teacher": {"path": str(tiny_models.teacher_dir)},
        "task": {"options": {"max_len": 4}},
    }, manager.plugin_tables())
    return [h["loss"] for h in train(config, manager).history]


def test_a_training_run_reuses_the_prefill_and_learns_what_the_full_forward_learns(tmp_path, tiny_models, monkeypatch):
    """Through the real entry-point plugins and the core loop: the on-policy sampler asks for the
    graph, the local student forward takes it on every step, and the losses equal a run without."""
    calls = []
    real = prefill_reuse.completion_hidden
    monkeypatch.setattr(prefill_reuse, "completion_hidden", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = _train(tmp_path, tiny_models, "reused")
    assert len(calls) == 3
    monkeypatch.setenv("OPDPLUG_DISABLE_PREFILL_REUSE", "1")
    full = _train(tmp_path, tiny_models, "full")
    assert len(calls) == 3
    assert reused == pytest.approx(full, rel=1e-4, abs=1e-6)
    monkeypatch.delenv("OPDPLUG_DISABLE_PREFILL_REUSE")
    _train(tmp_path, tiny_models, "accumulated", grad_accum=2, batch_size=2)  # a graph would wait for a later backward
    assert len(calls) == 3
