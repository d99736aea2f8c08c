"""EAGLE-3 training: the TTT loss learns and masks what it must (the run itself, in the core loop:
``test_eagle3_loop.py``)."""
import dataclasses

import pytest
import torch

from opdplug_local.tasks import SumChain
from opdplug_drafters.eagle3 import Eagle3Options
from opdplug_drafters.eagle3.toy import toy_head, toy_target
from opdplug_drafters.eagle3.ttt import generate, target_batch, ttt_loss


@pytest.fixture(scope="module")
def sharp_target():
    """A tiny untrained target made confident (scaled lm-head), so there is something to learn."""
    model, tok = toy_target(num_layers=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model, tok


def test_ttt_loss_decreases(sharp_target):
    model, tok = sharp_target
    head = toy_head(model, draft_vocab_size=24).train()
    prompts = SumChain(tok).prompts(8, seed=0)
    sample = generate(model, prompts, Eagle3Options(max_new_tokens=16), eos_id=2, pad_id=0, seed=0)
    batch = target_batch(model, sample, head.aux_layers, head.draft_to_target_Vd)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(50):
        loss, m = ttt_loss(head, batch, 4, 0.8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(m)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["top1"][0] > history[0]["top1"][0] + 0.3
    assert history[-1]["accept_len"] > history[0]["accept_len"]
    assert 1.0 <= history[-1]["accept_len"] <= 5.0  # at most 4 drafts + the bonus token
    by_k = history[-1]["accept_len_by_k"]
    assert by_k[-1] == history[-1]["accept_len"] and all(a <= b for a, b in zip(by_k, by_k[1:]))
    assert all(1.0 <= a <= k + 1 for k, a in enumerate(by_k, start=1))
    assert not head.embed_tokens.weight.grad  # the target's table stays frozen


def test_loss_masks_prompt_and_padding(sharp_target):
    """Changing the target's distribution outside completion positions changes nothing."""
    model, tok = sharp_target
    head = toy_head(model)
    prompts = SumChain(tok).prompts(3, seed=1)
    batch = target_batch(model, generate(model, prompts, Eagle3Options(max_new_tokens=8), eos_id=2, pad_id=0, seed=2),
                         head.aux_layers, head.draft_to_target_Vd)
    with torch.no_grad():
        base, base_m = ttt_loss(head, batch, 3, 0.8)
        # Position p's logits predict token p + 1: scramble those predicting prompt tokens or padding.
        predicts_completion = torch.zeros_like(batch.loss_mask_B_L, dtype=torch.bool)
        predicts_completion[:, :-1] = batch.loss_mask_B_L[:, 1:].bool()
        logits = batch.target_logits_B_L_Vd.clone()
        logits[~predicts_completion] = torch.randn_like(logits[~predicts_completion]) * 10
        argmax = batch.target_argmax_B_L.clone()
        argmax[~predicts_completion] = 7
        scrambled = dataclasses.replace(batch, target_logits_B_L_Vd=logits, target_argmax_B_L=argmax)
        other, other_m = ttt_loss(head, scrambled, 3, 0.8)
    assert base_m["top1"] == other_m["top1"] and base_m["accept_len"] == other_m["accept_len"]
    torch.testing.assert_close(base, other)
