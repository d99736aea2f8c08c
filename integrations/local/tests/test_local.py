"""The local backend's rollout batch and its mode handling."""
from __future__ import annotations

import dataclasses

import torch

from opdplug_local import tiny
from opdplug_local.models import collate, eval_mode, model_rollout
from opdplug_local.sampling import sample
from opdplug_local.tasks import SumChain
from opdplug.types import PRODUCER_STUDENT


def test_model_rollout_is_what_collate_builds_from_the_completions():
    """model_rollout assembles its batch from the sample's tensors directly: it must equal the
    batch ``collate`` builds from the same completions (ids, masks, producers, log-probs)."""
    task = SumChain()
    tok = task.tokenizer
    model = tiny.build_model("tiny", tok, seed=1).eval()
    prompts = task.prompts(6, seed=3, split="train")
    prompts[0] = dataclasses.replace(prompts[0], prompt_ids=prompts[0].prompt_ids[:2])  # mixed lengths
    budgets = [2, 9, 9, 9, 9, 9]  # row 0 is truncated
    kw = dict(max_new_tokens=budgets, temperature=1.0, top_p=1.0, row_seeds=list(range(6)))
    got = model_rollout(model, prompts, producer=PRODUCER_STUDENT, tokenizer=tok, generator=None, on_policy=True, **kw)
    out = sample(model, [list(p.prompt_ids) for p in prompts], eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                 max_new_tokens=budgets, temperature=1.0, row_seeds=list(range(6)))
    keep = out.completion_mask_B_L.bool()
    want = collate(prompts, out.completions(), producer=PRODUCER_STUDENT, pad_id=tok.pad_token_id,
                   logprobs=[out.logprobs_B_L[i][keep[i]].tolist() for i in range(6)],
                   truncated=out.truncated_B.tolist(), on_policy=True)
    assert bool(got.truncated_B[0])
    for field in ("input_ids_B_L", "attention_mask_B_L", "loss_mask_B_L", "producer_B_L", "sampling_logprobs_B_L",
                  "prompt_lens_B", "truncated_B", "on_policy_B"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and torch.equal(a, b), field
    assert got.prompts == want.prompts


def test_eval_mode_restores_the_mode_and_leaves_an_eval_model_alone(monkeypatch):
    tok = SumChain().tokenizer
    model = tiny.build_model("tiny", tok, seed=0).train()
    with eval_mode(model):
        assert not model.training and not model.model.layers[0].training
    assert model.training and model.model.layers[0].training

    # transformers 5's own train() re-runs kernelize on every mode change: eval_mode flips the
    # flags through torch.nn.Module.train and never calls the model's override
    def refuse(self, mode=True):
        raise AssertionError("the model's own train() was called")

    monkeypatch.setattr(type(model), "train", refuse)
    with eval_mode(model):
        assert not model.training
    assert model.training

    torch.nn.Module.train(model, False)
    walks = []
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: walks.append(mode))
    with eval_mode(model):
        pass
    assert walks == []  # a frozen teacher in eval mode: no walk over its modules
