"""The lean Llama forward against transformers' own, and the cases where it must step aside."""
from __future__ import annotations

import pytest
import torch

from opdplug_local import fastpath, tiny
from opdplug_local.sampling import _positions, final_hidden, sample
from opdplug_local.tasks import SumChain


def _model(tok, **overrides):
    size = dict(tiny.SIZES["tiny"], **overrides)
    model = tiny.build_model(size, tok, seed=3).eval()
    with torch.no_grad():  # biases are zero at init: make them count
        for p in model.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model


def _left_padded(tok, rows):
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        mask[b, L - len(r):] = 1
    return ids, mask


@pytest.fixture(scope="module")
def task():
    return SumChain()


@pytest.mark.parametrize("overrides", [
    {},  # grouped-query attention (4 query heads, 2 key/value heads)
    {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
])
def test_hidden_and_logits_match_transformers(task, overrides):
    tok = task.tokenizer
    model = _model(tok, **overrides)
    assert fastpath.unsupported_reason(model) is None
    rows = [list(p.prompt_ids) + list(p.reference_ids) for p in task.prompts(4, seed=1, split="train")]
    rows[0] = rows[0][:4]
    ids, mask = _left_padded(tok, rows)
    pos = _positions(mask)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        fast = fastpath.FastLlama(model)
        hidden = fast.hidden(ids, mask, pos)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], ref.hidden_states[-1][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.logits(hidden)[real], ref.logits[real], atol=1e-5, rtol=1e-5)


def test_decode_matches_a_cache_free_forward(task):
    """prefill + decode steps give the logits of the whole sequence run at once, per row."""
    tok = task.tokenizer
    model = _model(tok)
    rows = [list(p.prompt_ids) for p in task.prompts(3, seed=2, split="train")]
    rows[1] = rows[1][:3]
    ids, mask = _left_padded(tok, rows)
    fast = fastpath.FastLlama(model)
    logits = fast.prefill(ids, mask, _positions(mask), max_new_tokens=4)
    next_pos = mask.sum(-1)
    generated = []
    for step in range(4):
        token = logits.argmax(-1)
        generated.append(token)
        full = [r + [int(t[b]) for t in generated] for b, r in enumerate(rows)]
        with torch.no_grad():
            want = torch.stack([model(torch.tensor([f])).logits[0, -1] for f in full])
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=-1)
        logits = fast.decode(token, mask, next_pos + step)
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)


def test_sampling_is_the_same_with_and_without_the_fast_path(task, monkeypatch):
    tok = task.tokenizer
    model = _model(tok)
    prompts = [list(p.prompt_ids) for p in task.prompts(6, seed=4, split="train")]
    calls = []
    real_prefill = fastpath.FastLlama.prefill
    monkeypatch.setattr(fastpath.FastLlama, "prefill", lambda self, *a, **k: (calls.append(1), real_prefill(self, *a, **k))[1])

    def draw(temperature, per_row=False):
        seeding = {"row_seeds": list(range(len(prompts)))} if per_row else {"generator": torch.Generator().manual_seed(7)}
        return sample(model, prompts, max_new_tokens=12, temperature=temperature, eos_id=tok.eos_token_id,
                      pad_id=tok.pad_token_id, **seeding)

    for temperature, per_row in ((0.0, False), (1.0, False), (1.0, True)):
        fast = draw(temperature, per_row)
        assert calls, "the fast path was not taken"
        calls.clear()
        monkeypatch.setenv("OPDPLUG_DISABLE_FASTPATH", "1")
        slow = draw(temperature, per_row)
        monkeypatch.delenv("OPDPLUG_DISABLE_FASTPATH")
        assert not calls
        assert torch.equal(fast.input_ids_B_L, slow.input_ids_B_L)
        torch.testing.assert_close(fast.logprobs_B_L, slow.logprobs_B_L, atol=1e-5, rtol=1e-5)


def test_bfloat16_matches_transformers_to_bf16_precision(task):
    tok = task.tokenizer
    model = _model(tok).to(torch.bfloat16)
    rows = [list(p.prompt_ids) for p in task.prompts(3, seed=5, split="train")]
    ids, mask = _left_padded(tok, rows)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), output_hidden_states=True)
        hidden = fastpath.FastLlama(model).hidden(ids, mask, _positions(mask))
    assert hidden.dtype == torch.bfloat16
    real = mask.bool()
    torch.testing.assert_close(hidden[real].float(), ref.hidden_states[-1][real].float(), atol=3e-2, rtol=3e-2)


def test_steps_aside_with_gradients_adapters_hooks_and_other_architectures(task, monkeypatch):
    tok = task.tokenizer
    model = _model(tok)
    assert fastpath.fast_forward(model) is None  # gradients enabled: that is training_hidden's case
    with torch.no_grad():
        assert fastpath.fast_forward(model) is not None
        monkeypatch.setenv("OPDPLUG_DISABLE_FASTPATH", "1")
        assert fastpath.fast_forward(model) is None
        monkeypatch.delenv("OPDPLUG_DISABLE_FASTPATH")

    # transformers installs passive output-capturing hooks on the first forward that asks for
    # hidden states (the student's training forward does): they must not switch the fast path off
    ids, mask = _left_padded(tok, [list(p.prompt_ids) for p in task.prompts(2, seed=6, split="train")])
    model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert fastpath.unsupported_reason(model) is None
    handle = model.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert "hooks" in fastpath.unsupported_reason(model)
    handle.remove()

    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(_model(tok), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert fastpath.unsupported_reason(lora) is not None
    # final_hidden still works through the model's own forward and gives the adapter's result
    ids, mask = _left_padded(tok, [list(p.prompt_ids) for p in task.prompts(2, seed=6, split="train")])
    with torch.no_grad():
        assert final_hidden(lora, ids, mask).shape[:2] == ids.shape

    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2))
    assert "not LlamaForCausalLM" in fastpath.unsupported_reason(gpt2)


def test_data_parallel_is_unwrapped_but_other_wrappers_are_not(task):
    tok = task.tokenizer
    model = _model(tok)
    assert fastpath.unwrap(torch.nn.DataParallel(model)) is model
    assert fastpath.unsupported_reason(torch.nn.DataParallel(model)) is None

    class Wrapper(torch.nn.Module):  # a forward of its own: the fast path must not bypass it
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert "not LlamaForCausalLM" in fastpath.unsupported_reason(Wrapper(model))


def test_snapshot_of_a_frozen_model_is_reused_until_a_weight_changes():
    """``fast_forward`` keeps a frozen model's snapshot while its parameters are unchanged and
    takes a new one after an in-place update; a trainable model is snapshotted on every call
    (the fused AdamW kernel updates weights without bumping their version counters)."""
    import torch

    from opdplug_local import fastpath, tiny
    from opdplug_local.tasks import SumChain

    tok = tiny.build_tokenizer(SumChain.words())
    model = tiny.build_model(tiny.SIZES["tiny"], tok, seed=0).eval()
    ids = torch.randint(3, 20, (2, 6))
    mask = torch.ones_like(ids)
    pos = torch.arange(6)[None].expand(2, -1)
    with torch.no_grad():
        trainable = fastpath.fast_forward(model), fastpath.fast_forward(model)
        assert trainable[0].layers is not trainable[1].layers
        model.requires_grad_(False)
        a, b = fastpath.fast_forward(model), fastpath.fast_forward(model)
        assert a is not b and a.layers is b.layers  # shared weights, separate caches
        before = a.hidden(ids, mask, pos)
        model.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
        c = fastpath.fast_forward(model)
        assert c.layers is not a.layers
        after = c.hidden(ids, mask, pos)
        want = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-4)


def test_fused_adamw_steps_reach_the_sampler():
    """Regression: after a fused AdamW step (which leaves version counters alone) sampling must
    use the new weights."""
    import torch

    from opdplug_local import fastpath, tiny
    from opdplug_local.tasks import SumChain

    tok = tiny.build_tokenizer(SumChain.words())
    model = tiny.build_model(tiny.SIZES["tiny"], tok, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    ids = torch.randint(3, 20, (1, 5))
    mask, pos = torch.ones_like(ids), torch.arange(5)[None]
    with torch.no_grad():
        before = fastpath.fast_forward(model).hidden(ids, mask, pos)
    model(input_ids=ids).logits.sum().backward()
    opt.step()
    with torch.no_grad():
        after = fastpath.fast_forward(model).hidden(ids, mask, pos)
        want = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- training forward
def _right_padded(tok, rows):
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
    return ids, mask


def _hidden_and_grads(model, forward, ids, mask):
    """Hidden states at real positions and the gradients of a fixed loss on them."""
    model.zero_grad()
    hidden = forward(ids, mask)
    real = mask.bool()
    probe = torch.linspace(-1, 1, hidden.shape[-1])
    ((hidden[real] * probe).sum(-1).sin().sum()).backward()
    return hidden[real].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", [
    {},  # grouped-query attention
    {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("layout", ["fused", "unfused"])
def test_training_forward_matches_transformers_values_and_gradients(task, overrides, padding, layout, monkeypatch):
    """The lean training forward (padding packed away) gives transformers' hidden states and the
    same gradients on every parameter, in both weight layouts (unfused: over ``FUSE_PER_CALL_BYTES``)."""
    if layout == "unfused":
        monkeypatch.setattr(fastpath, "FUSE_PER_CALL_BYTES", 0)
    tok = task.tokenizer
    model = _model(tok, **overrides).train()
    rows = [list(p.prompt_ids) + list(p.reference_ids) for p in task.prompts(4, seed=2, split="train")]
    rows[1] = rows[1][:3]
    ids, mask = (_left_padded if padding == "left" else _right_padded)(tok, rows)
    assert not mask.bool().all()
    pos = _positions(mask)
    lean, lean_grads = _hidden_and_grads(model, lambda i, m: fastpath.training_hidden(model, i, m, pos), ids, mask)
    ref, ref_grads = _hidden_and_grads(
        model, lambda i, m: model(input_ids=i, attention_mask=m, position_ids=pos, output_hidden_states=True).hidden_states[-1],
        ids, mask)
    torch.testing.assert_close(lean, ref, atol=1e-5, rtol=1e-5)
    assert lean_grads.keys() == ref_grads.keys() and "model.layers.0.self_attn.q_proj.weight" in lean_grads
    for name in ref_grads:  # round-off relative to each gradient's scale (sums run in another order)
        err, scale = (lean_grads[name] - ref_grads[name]).abs().max(), ref_grads[name].abs().max()
        assert err <= 1e-5 * scale + 1e-6, (name, float(err), float(scale))


def test_trainable_models_are_fused_only_while_their_layers_are_small(task, monkeypatch):
    """Fusing a trainable model copies its layer weights on every call (and keeps the copies for
    the backward): only below ``FUSE_PER_CALL_BYTES``. A frozen one is cached, so its limit is
    ``SNAPSHOT_CACHE_BYTES``; the two limits are independent."""
    model = _model(task.tokenizer).train()
    assert fastpath.FastLlama(model, differentiable=True).fused
    with torch.no_grad():
        assert fastpath.fast_forward(model).fused
    monkeypatch.setattr(fastpath, "FUSE_PER_CALL_BYTES", 0)
    assert not fastpath.FastLlama(model, differentiable=True).fused
    with torch.no_grad():
        trainable = fastpath.fast_forward(model)
        assert not trainable.fused and trainable.layers[0].qkv_weight[0].data_ptr() == model.model.layers[0].self_attn.q_proj.weight.data_ptr()
        assert fastpath.fast_forward(model.requires_grad_(False)).fused  # frozen: under the snapshot limit


def test_final_hidden_trains_through_the_lean_forward_unless_disabled(task, monkeypatch):
    tok = task.tokenizer
    model = _model(tok).train()
    ids, mask = _left_padded(tok, [list(p.prompt_ids) for p in task.prompts(3, seed=4, split="train")])
    calls = []
    real_forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: (calls.append(1), real_forward(self, *a, **k))[1])
    lean = final_hidden(model, ids, mask)
    assert not calls and lean.requires_grad
    monkeypatch.setenv("OPDPLUG_DISABLE_FASTPATH", "1")
    slow = final_hidden(model, ids, mask)
    assert calls
    real = mask.bool()
    real[:, -1] = False  # final_hidden is shifted by one: row t holds position t - 1
    real = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    torch.testing.assert_close(lean[real], slow[real], atol=1e-5, rtol=1e-5)


def test_training_forward_steps_aside_for_checkpointing_and_a_replaced_forward(task):
    tok = task.tokenizer
    ids, mask = _left_padded(tok, [list(p.prompt_ids) for p in task.prompts(2, seed=4, split="train")])
    pos = _positions(mask)
    model = _model(tok).train()
    assert fastpath.training_hidden(model, ids, mask, pos) is not None
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert fastpath.training_hidden(model, ids, mask, pos) is None  # transformers does the recomputation
    model = _model(tok).train()
    model.forward = lambda *a, **k: None  # e.g. accelerate's autocast wrapper: it must stay in charge
    assert fastpath.training_hidden(model, ids, mask, pos) is None


def test_ddp_runs_the_lean_forward_through_its_own_forward(task, tmp_path):
    """Under DistributedDataParallel the lean forward is entered through DDP's forward (which
    readies the gradient all-reduce), gives the unwrapped model's gradients, and leaves the
    inner model's forward as it was."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    tok = task.tokenizer
    ids, mask = _left_padded(tok, [list(p.prompt_ids) + list(p.reference_ids) for p in task.prompts(3, seed=7, split="train")])
    pos = _positions(mask)
    plain = _model(tok).train()
    want, want_grads = _hidden_and_grads(plain, lambda i, m: fastpath.training_hidden(plain, i, m, pos), ids, mask)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _model(tok).train()
        model.load_state_dict(plain.state_dict())
        ddp = DDP(model)
        entered = []
        ddp.register_forward_pre_hook(lambda *a: entered.append(1))
        got, got_grads = _hidden_and_grads(model, lambda i, m: fastpath.training_hidden(ddp, i, m, pos), ids, mask)
    finally:
        dist.destroy_process_group()
    assert entered and "forward" not in model.__dict__
    torch.testing.assert_close(got, want)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], msg=name)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("layout", ["fused", "unfused"])
def test_needed_rows_only_give_the_same_values_and_gradients_there(task, padding, layout, monkeypatch):
    """``final_hidden(..., needed_B_L=loss mask)``: the last layer's output projection and MLP run on
    the needed rows only (counted), those rows and every gradient of a loss on them are what the
    whole forward gives, the other rows are zeros; with and without gradients."""
    if layout == "unfused":
        monkeypatch.setattr(fastpath, "FUSE_PER_CALL_BYTES", 0)
    tok = task.tokenizer
    model = _model(tok).train()
    prompts = task.prompts(4, seed=5, split="train")
    rows = [list(p.prompt_ids) + list(p.reference_ids) for p in prompts]
    ids, mask = (_left_padded if padding == "left" else _right_padded)(tok, rows)
    needed = torch.zeros_like(mask, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, rows)):  # the completion, with a hole (a tool's turn)
        start = int(mask[b].nonzero()[0]) + len(p.prompt_ids)
        needed[b, start:start + len(r) - len(p.prompt_ids)] = True
    needed[0, int(needed[0].nonzero()[1])] = False
    widths = []
    real_project_add = fastpath.FastLlama._project_add
    monkeypatch.setattr(fastpath.FastLlama, "_project_add",
                        staticmethod(lambda x, a, w, b: (widths.append(a.shape[0]), real_project_add(x, a, w, b))[1]))
    probe = torch.linspace(-1, 1, model.config.hidden_size)
    results = []
    for wanted in (None, needed):
        model.zero_grad()
        widths.clear()
        hidden = final_hidden(model, ids, mask, needed_B_L=wanted)
        ((hidden[needed] * probe).sum(-1).sin().sum()).backward()
        results.append((hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                        list(widths)))
        with torch.no_grad():
            torch.testing.assert_close(final_hidden(model, ids, mask, needed_B_L=wanted)[needed], hidden[needed].detach())
    (full, full_grads, full_widths), (lean, lean_grads, lean_widths) = results
    assert lean_widths[:-2] == full_widths[:-2] and lean_widths[-2:] == [int(needed.sum())] * 2 < full_widths[-2:]
    torch.testing.assert_close(lean[needed], full[needed], atol=1e-6, rtol=1e-6)
    assert not lean[~needed].any()
    assert lean_grads.keys() == full_grads.keys()
    for name in full_grads:
        err, scale = (lean_grads[name] - full_grads[name]).abs().max(), full_grads[name].abs().max()
        assert err <= 1e-5 * scale + 1e-7, (name, float(err), float(scale))
