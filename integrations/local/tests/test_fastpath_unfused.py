"""The fast path's unfused layout (a frozen model too large to copy every call) against
transformers' forward and against the fused layout: same logits, same decode, no weight copied."""
from __future__ import annotations

import pytest
import torch

from opdplug_local import fastpath, tiny
from opdplug_local.sampling import _positions, sample
from opdplug_local.tasks import SumChain


@pytest.fixture(scope="module")
def task():
    return SumChain()


def _model(tok, **overrides):
    model = tiny.build_model(dict(tiny.SIZES["tiny"], **overrides), tok, seed=5).eval()
    with torch.no_grad():  # biases are zero at init: make them count
        for p in model.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model.requires_grad_(False)


def _batch(task, n, seed):
    rows = [list(p.prompt_ids) + list(p.reference_ids) for p in task.prompts(n, seed=seed, split="train")]
    rows[0] = rows[0][:4]
    L = max(map(len, rows))
    ids = torch.tensor([[task.tokenizer.pad_token_id] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True}])
def test_unfused_hidden_and_logits_match_transformers_and_the_fused_layout(task, overrides):
    model = _model(task.tokenizer, **overrides)
    ids, mask = _batch(task, 4, seed=1)
    pos = _positions(mask)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        unfused, fused = fastpath.FastLlama(model, fuse=False), fastpath.FastLlama(model, fuse=True)
        h_u, h_f = unfused.hidden(ids, mask, pos), fused.hidden(ids, mask, pos)
    assert not unfused.fused and fused.fused
    real = mask.bool()
    torch.testing.assert_close(h_u[real], ref.hidden_states[-1][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unfused.logits(h_u)[real], ref.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_u[real], h_f[real], atol=1e-5, rtol=1e-5)


def test_a_frozen_model_over_the_snapshot_limit_is_read_in_place_and_samples_the_same(task, monkeypatch):
    """Over ``SNAPSHOT_CACHE_BYTES`` a frozen model's fast forward holds the module's own weight
    tensors (nothing copied), and sampling gives the tokens of the model's own forward."""
    tok = task.tokenizer
    model = _model(tok)
    monkeypatch.setattr(fastpath, "SNAPSHOT_CACHE_BYTES", 0)
    with torch.no_grad():
        fast = fastpath.fast_forward(model)
    layer, w = model.model.layers[0], fast.layers[0]
    assert not fast.fused
    assert [t.data_ptr() for t in w.qkv_weight] == [layer.self_attn.q_proj.weight.data_ptr(),
                                                    layer.self_attn.k_proj.weight.data_ptr(), layer.self_attn.v_proj.weight.data_ptr()]
    assert [t.data_ptr() for t in w.gate_up_weight] == [layer.mlp.gate_proj.weight.data_ptr(), layer.mlp.up_proj.weight.data_ptr()]
    prompts = [list(p.prompt_ids) for p in task.prompts(5, seed=4, split="train")]

    def draw():
        return sample(model, prompts, max_new_tokens=10, temperature=1.0, eos_id=tok.eos_token_id,
                      pad_id=tok.pad_token_id, generator=torch.Generator().manual_seed(3))

    fast_out = draw()
    monkeypatch.setenv("OPDPLUG_DISABLE_FASTPATH", "1")
    slow_out = draw()
    assert torch.equal(fast_out.input_ids_B_L, slow_out.input_ids_B_L)
    torch.testing.assert_close(fast_out.logprobs_B_L, slow_out.logprobs_B_L, atol=1e-5, rtol=1e-5)
