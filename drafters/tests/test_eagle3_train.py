"""EAGLE-3 training: the TTT loss learns, and train_eagle3 writes a usable head and its metrics."""
import dataclasses
import json

import pytest
import torch

from opdplug.errors import ConfigError
from opdplug_local.tasks import SumChain
from opdplug_drafters.eagle3 import Eagle3Drafter, Eagle3Options, plot_metrics, read_metrics, train_eagle3
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


def test_train_eagle3_writes_head_metrics_and_plot(tmp_path):
    target_dir = tmp_path / "target"
    model, tok = toy_target(num_layers=4, directory=target_dir)
    options = Eagle3Options(steps=4, batch_size=4, ttt_steps=3, draft_vocab_size=20, max_new_tokens=10,
                            vocab_prompts=16, eval_prompts=8, eval_every=2, log_every=2, progress=False)
    result = train_eagle3(target_dir, None, options, tmp_path / "run", task=SumChain(tok, max_len=4))
    assert result.steps_done == 4 and result.aux_layers == (1, 2, 3) and result.draft_vocab_size == 20
    assert (result.head_dir / "model.safetensors").is_file() and (result.head_dir / "config.json").is_file()
    evals = read_metrics(result.metrics_path, "eval")
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert len(evals[-1]["top1"]) == 3 and result.final_eval == evals[-1]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [2, 4]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["sglang_eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    png = plot_metrics(tmp_path / "run", tmp_path / "acc.png")
    assert png.stat().st_size > 1000
    drafter = Eagle3Drafter.from_pretrained(tmp_path / "run", model)
    assert drafter.feature_layers == (1, 2, 3)
    assert int(drafter.head.t2d[tok.eos_token_id])  # EOS is always draftable


def test_options_are_validated():
    with pytest.raises(ConfigError):
        Eagle3Options(ttt_steps=0)
    with pytest.raises(ConfigError):
        Eagle3Options(temperature=-1.0)
