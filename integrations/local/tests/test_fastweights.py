"""``share_fused_weights``: a frozen model's q/k/v and gate/up stored as one tensor each, in place,
so the unfused fast path runs one product for each: same numbers, no copy, and a safe fallback
whenever the weights stop being that tensor's rows."""
from __future__ import annotations

import pytest
import torch

from opdplug_local import fastpath, tiny
from opdplug_local.fastweights import share_fused_weights, shared_weight
from opdplug_local.sampling import _positions
from opdplug_local.tasks import SumChain


@pytest.fixture(scope="module")
def task():
    return SumChain()


def _frozen(tok, **overrides):
    model = tiny.build_model(dict(tiny.SIZES["tiny"], **overrides), tok, seed=7).eval()
    with torch.no_grad():  # biases are zero at init: make them count
        for p in model.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model.requires_grad_(False)


def _batch(task, n=4):
    rows = [list(p.prompt_ids) + list(p.reference_ids) for p in task.prompts(n, seed=2, split="train")]
    rows[0] = rows[0][:5]
    L = max(map(len, rows))
    ids = torch.tensor([[task.tokenizer.pad_token_id] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _run(model, ids, mask):
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), output_hidden_states=True)
        fast = fastpath.FastLlama(model, fuse=False)
        return own.hidden_states[-1], fast.hidden(ids, mask, _positions(mask)), fast


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True}])
def test_shared_storage_gives_the_same_numbers_with_one_product_and_no_new_memory(task, overrides):
    model = _frozen(task.tokenizer, **overrides)
    ids, mask = _batch(task)
    own_before, fast_before, parts = _run(model, ids, mask)
    assert isinstance(parts.layers[0].qkv_weight, tuple)  # unfused: three products
    q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    n_params = sum(p.numel() for p in model.parameters())

    assert share_fused_weights(model.model.layers) is True
    own_after, fast_after, one = _run(model, ids, mask)
    att, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    qkv = shared_weight(att.q_proj, att.k_proj, att.v_proj)
    assert qkv is not None and shared_weight(mlp.gate_proj, mlp.up_proj) is not None
    assert one.layers[0].qkv_weight.data_ptr() == qkv.data_ptr() == att.q_proj.weight.data_ptr()  # no copy
    assert not isinstance(one.layers[0].gate_up_weight, tuple)
    assert torch.equal(att.q_proj.weight, q_before)
    assert sum(p.numel() for p in model.parameters()) == n_params and len(model.state_dict()) == len(dict(model.named_parameters()))
    real = mask.bool()
    torch.testing.assert_close(own_after[real], own_before[real], atol=0, rtol=0)  # the module's forward: unchanged
    torch.testing.assert_close(fast_after[real], fast_before[real], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast_after[real], own_after[real], atol=1e-5, rtol=1e-5)


def test_an_in_place_update_is_seen_and_a_replaced_weight_falls_back(task):
    model = _frozen(task.tokenizer)
    share_fused_weights(model.model.layers)
    ids, mask = _batch(task)
    att = model.model.layers[1].self_attn
    with torch.no_grad():
        att.k_proj.weight.mul_(1.5)  # a view: the shared tensor sees it
    own, fast, one = _run(model, ids, mask)
    assert not isinstance(one.layers[1].qkv_weight, tuple)
    torch.testing.assert_close(fast[mask.bool()], own[mask.bool()], atol=1e-5, rtol=1e-5)

    att.v_proj.weight.data = att.v_proj.weight.detach().clone() * 0.5  # no longer the shared rows
    assert shared_weight(att.q_proj, att.k_proj, att.v_proj) is None
    own, fast, parts = _run(model, ids, mask)
    assert isinstance(parts.layers[1].qkv_weight, tuple) and not isinstance(parts.layers[0].qkv_weight, tuple)
    torch.testing.assert_close(fast[mask.bool()], own[mask.bool()], atol=1e-5, rtol=1e-5)


def test_a_trainable_model_is_left_alone(task):
    model = _frozen(task.tokenizer).requires_grad_(True)
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert share_fused_weights(model.model.layers) is False
    assert [p.data_ptr() for p in model.parameters()] == ptrs


def test_the_teacher_the_local_backend_loads_shares_its_weights(tmp_path, tiny_models):
    """Through the core's set-up and the entry-point plugin: the local backend's opd_load_models
    stores the frozen teacher this way, and leaves the trainable student as it is."""
    from opdplug.config import parse_config
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import setup, teardown

    manager = make_plugin_manager()
    config = parse_config({"run": {"output_dir": str(tmp_path / "run"), "steps": 1, "batch_size": 2, "progress": False},
                           "student": {"path": str(tiny_models.student_dir)},
                           "teacher": {"path": str(tiny_models.teacher_dir)}}, manager.plugin_tables())
    ctx = setup(config, manager)
    try:
        for model, shared in ((ctx.teacher, True), (ctx.student_module(), False)):
            att = model.model.layers[0].self_attn
            assert (shared_weight(att.q_proj, att.k_proj, att.v_proj) is not None) is shared
    finally:
        teardown(ctx)
