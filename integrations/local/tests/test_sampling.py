"""The KV-cached batched sampler and the scoring helpers, against cache-free references."""
from __future__ import annotations

import pytest
import torch

from opdplug_local import tiny
from opdplug_local.sampling import final_hidden, forward_logprobs, lm_head_weight, sample
from opdplug_local.tasks import SumChain


@pytest.fixture(scope="module")
def setup():
    task = SumChain()
    tok = task.tokenizer
    # Sharpen the random init a little so greedy paths are not decided by float noise.
    model = tiny.build_model("tiny", tok, seed=0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    prompts = [list(p.prompt_ids) for p in task.prompts(5, seed=0, split="train")]
    prompts[0] = prompts[0][:3]  # make the lengths clearly mixed
    return task, tok, model, prompts


def _kw(tok, **extra):
    kw = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    kw.update(extra)
    return kw


def _greedy_no_cache(model, prompt, max_new, eos_id):
    ids = list(prompt)
    out = []
    for _ in range(max_new):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(nxt)
        out.append(nxt)
        if nxt == eos_id:
            break
    return out


def test_greedy_matches_uncached_argmax_and_solo_rows(setup):
    task, tok, model, prompts = setup
    res = sample(model, prompts, max_new_tokens=12, temperature=0.0, generator=None, **_kw(tok))
    comps = res.completions()
    for b, prompt in enumerate(prompts):
        assert comps[b] == _greedy_no_cache(model, prompt, 12, tok.eos_token_id)
        solo = sample(model, [prompt], max_new_tokens=12, temperature=0.0, generator=None, **_kw(tok))
        assert solo.completions()[0] == comps[b]
        p = len(prompt)
        assert res.input_ids_B_L[b, :p].tolist() == prompt
        assert int(res.prompt_lens_B[b]) == p
        n = len(comps[b])
        assert res.attention_mask_B_L[b].tolist() == [1] * (p + n) + [0] * (res.input_ids_B_L.shape[1] - p - n)
        assert (res.input_ids_B_L[b, p + n:] == tok.pad_token_id).all()
        assert bool(res.truncated_B[b]) == (tok.eos_token_id not in comps[b])
    # Greedy log-probs are reported at temperature 1.
    ref_B_L = forward_logprobs(model, res.input_ids_B_L, res.attention_mask_B_L, 1.0)
    m = res.completion_mask_B_L.bool()
    torch.testing.assert_close(res.logprobs_B_L[m], ref_B_L[m], atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_forward_logprobs(setup, temperature):
    task, tok, model, prompts = setup
    gen = torch.Generator().manual_seed(0)
    res = sample(model, prompts * 4, max_new_tokens=10, temperature=temperature, generator=gen, **_kw(tok))
    m = res.completion_mask_B_L.bool()
    assert m.sum() > 0
    ref_B_L = forward_logprobs(model, res.input_ids_B_L, res.attention_mask_B_L, temperature)
    torch.testing.assert_close(res.logprobs_B_L[m], ref_B_L[m], atol=1e-5, rtol=0)
    assert (res.logprobs_B_L[~m] == 0).all()
    chunked = forward_logprobs(model, res.input_ids_B_L, res.attention_mask_B_L, temperature, chunk_size=3)
    torch.testing.assert_close(chunked, ref_B_L, atol=1e-5, rtol=0)


class _LogitBias(torch.nn.Module):
    """Adds a fixed bias to the wrapped model's logits (to force or forbid tokens)."""

    def __init__(self, module, bias_V):
        super().__init__()
        self.module = module
        self.bias_V = bias_V

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        out.logits = out.logits + self.bias_V
        return out


def test_eos_stops_rows_and_truncation(setup):
    task, tok, model, _ = setup
    prompts = [[1, 4, 20], [1, 5]]
    bias_V = torch.zeros(len(tok))
    bias_V[tok.eos_token_id] = 1e4  # EOS first, always
    forced = _LogitBias(model, bias_V)
    res = sample(forced, prompts, max_new_tokens=6, temperature=1.0, generator=torch.Generator().manual_seed(0), **_kw(tok))
    assert res.completions() == [[tok.eos_token_id], [tok.eos_token_id]]
    assert res.input_ids_B_L.shape == (2, 4)
    assert res.input_ids_B_L[1].tolist() == [1, 5, tok.eos_token_id, tok.pad_token_id]
    assert not res.truncated_B.any()
    # EOS forbidden: every row runs to the budget and is truncated.
    bias_V[tok.eos_token_id] = -1e4
    res = sample(forced, prompts, max_new_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(0), **_kw(tok))
    assert res.truncated_B.all()
    assert res.completion_lens_B.tolist() == [5, 5]
    assert res.input_ids_B_L.shape == (2, 8)


def test_mixed_stop_times_pad_after_eos(setup):
    task, tok, model, prompts = setup
    gen = torch.Generator().manual_seed(1)
    res = sample(model, prompts * 6, max_new_tokens=15, temperature=1.5, generator=gen, **_kw(tok))
    for b, comp in enumerate(res.completions()):
        if tok.eos_token_id in comp:
            assert comp.index(tok.eos_token_id) == len(comp) - 1  # nothing generated after EOS
            assert not res.truncated_B[b]
        else:
            assert len(comp) == 15 and res.truncated_B[b]
    assert res.completion_lens_B.min() < res.completion_lens_B.max()


def test_seeded_generator_is_deterministic(setup):
    task, tok, model, prompts = setup
    run = lambda s: sample(model, prompts, max_new_tokens=10, temperature=1.0,  # noqa: E731
                           generator=torch.Generator().manual_seed(s), **_kw(tok))
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.input_ids_B_L, b.input_ids_B_L)
    assert torch.equal(a.logprobs_B_L, b.logprobs_B_L)
    assert not torch.equal(a.input_ids_B_L, c.input_ids_B_L)


def test_top_p_picks_only_within_the_nucleus(setup):
    task, tok, model, prompts = setup
    top_p = 0.5
    gen = torch.Generator().manual_seed(0)
    res = sample(model, prompts * 8, max_new_tokens=8, temperature=1.0, top_p=top_p, generator=gen, **_kw(tok))
    with torch.no_grad():
        logits_B_L_V = model(input_ids=res.input_ids_B_L, attention_mask=res.attention_mask_B_L).logits
    probs_B_L_V = torch.softmax(logits_B_L_V.float(), -1)
    checked = 0
    for b, t in res.completion_mask_B_L.nonzero().tolist():
        probs_V = probs_B_L_V[b, t - 1]
        tok_id = int(res.input_ids_B_L[b, t])
        # Inside the nucleus: the mass of strictly more likely tokens is below top_p.
        assert probs_V[probs_V > probs_V[tok_id]].sum() < top_p + 1e-6
        checked += 1
    assert checked > 20
    # And the reported log-prob is the untruncated one.
    ref_B_L = forward_logprobs(model, res.input_ids_B_L, res.attention_mask_B_L, 1.0)
    m = res.completion_mask_B_L.bool()
    torch.testing.assert_close(res.logprobs_B_L[m], ref_B_L[m], atol=1e-5, rtol=0)


def test_final_hidden_is_shifted_and_post_norm(setup):
    task, tok, model, prompts = setup
    res = sample(model, prompts, max_new_tokens=6, temperature=0.0, generator=None, **_kw(tok))
    ids_B_L, mask_B_L = res.input_ids_B_L, res.attention_mask_B_L
    with torch.no_grad():
        hidden_B_L_H = final_hidden(model, ids_B_L, mask_B_L)
        logits_B_L_V = model(input_ids=ids_B_L, attention_mask=mask_B_L).logits
    assert hidden_B_L_H.shape == (*ids_B_L.shape, model.config.hidden_size)
    assert (hidden_B_L_H[:, 0] == 0).all()
    weight_V_H = lm_head_weight(model)
    assert weight_V_H is model.lm_head.weight
    real_B_L = mask_B_L.bool()
    real_B_L[:, 0] = False
    recon_B_L_V = hidden_B_L_H @ weight_V_H.T
    torch.testing.assert_close(recon_B_L_V[:, 1:][real_B_L[:, 1:]], logits_B_L_V[:, :-1][real_B_L[:, 1:]], atol=1e-5, rtol=0)


def test_gradients_flow_through_final_hidden(setup):
    task, tok, model, prompts = setup
    ids_B_L = torch.tensor([prompts[1]])
    hidden_B_L_H = final_hidden(model, ids_B_L, torch.ones_like(ids_B_L))
    (hidden_B_L_H @ lm_head_weight(model).T).sum().backward()
    assert model.model.embed_tokens.weight.grad is not None
    model.zero_grad(set_to_none=True)


class _Wrapper(torch.nn.Module):
    """Stands in for DDP: a ``.module`` attribute and a forward that delegates."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_wrapped_models_work_as_is(setup):
    task, tok, model, prompts = setup
    wrapped = _Wrapper(model)
    a = sample(model, prompts, max_new_tokens=8, temperature=0.0, generator=None, **_kw(tok))
    b = sample(wrapped, prompts, max_new_tokens=8, temperature=0.0, generator=None, **_kw(tok))
    assert torch.equal(a.input_ids_B_L, b.input_ids_B_L)
    assert lm_head_weight(wrapped) is model.lm_head.weight


def test_peft_wrapped_model():
    peft = pytest.importorskip("peft")
    task = SumChain()
    tok = task.tokenizer
    base = tiny.build_model("tiny", tok, seed=0)
    head = base.lm_head.weight
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    prompts = [list(p.prompt_ids) for p in task.prompts(3, seed=0, split="train")]
    res = sample(lora, prompts, max_new_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(0), **_kw(tok))
    assert res.completion_mask_B_L.sum() > 0
    assert lm_head_weight(lora) is head


def test_row_seeds_make_each_row_independent_of_its_batch(setup):
    """Per-row seeds: a row samples the same tokens alone, in any order and beside any other
    rows (other padding), which is what lets two processes reproduce one."""
    task, tok, model, prompts = setup
    seeds = [11, 12, 13, 14, 15]
    kw = dict(max_new_tokens=12, temperature=1.0, **_kw(tok))
    together = sample(model, prompts, row_seeds=seeds, **kw).completions()
    assert len(set(map(tuple, together))) > 1
    for b in range(len(prompts)):
        alone = sample(model, [prompts[b]], row_seeds=[seeds[b]], **kw).completions()[0]
        assert alone == together[b]
    order = [4, 2, 0, 3, 1]
    shuffled = sample(model, [prompts[i] for i in order], row_seeds=[seeds[i] for i in order], **kw).completions()
    assert shuffled == [together[i] for i in order]
    again = sample(model, prompts, row_seeds=seeds, **kw)
    assert again.completions() == together
    assert sample(model, prompts, row_seeds=[s + 100 for s in seeds], **kw).completions() != together
    with pytest.raises(ValueError, match="not both"):
        sample(model, prompts, row_seeds=seeds, generator=torch.Generator(), **kw)


def test_row_seeds_draw_from_the_policy(setup):
    """Inverse-CDF draws follow softmax(logits / T): first-token frequencies over many rows."""
    task, tok, model, prompts = setup
    n = 4000
    res = sample(model, [prompts[1]] * n, max_new_tokens=1, temperature=1.3, row_seeds=list(range(n)), **_kw(tok))
    with torch.no_grad():
        probs_V = torch.softmax(model(torch.tensor([prompts[1]])).logits[0, -1].float() / 1.3, -1)
    counts_V = torch.bincount(res.input_ids_B_L[:, len(prompts[1])], minlength=probs_V.shape[0]).float()
    # Each frequency within 4.5 standard errors of its probability.
    assert ((counts_V / n - probs_V).abs() <= 4.5 * (probs_V * (1 - probs_V) / n).sqrt() + 1e-3).all()
    m = res.completion_mask_B_L.bool()
    ref_B_L = forward_logprobs(model, res.input_ids_B_L[:50], res.attention_mask_B_L[:50], 1.3)
    torch.testing.assert_close(res.logprobs_B_L[:50][m[:50]], ref_B_L[m[:50]], atol=1e-5, rtol=0)


def test_per_row_budgets(setup):
    task, tok, model, prompts = setup
    bias_V = torch.zeros(len(tok))
    bias_V[tok.eos_token_id] = -1e4  # never EOS: every row uses its whole budget
    forced = _LogitBias(model, bias_V)
    budgets = [2, 5, 1, 3, 4]
    res = sample(forced, prompts, max_new_tokens=budgets, temperature=1.0, row_seeds=[1, 2, 3, 4, 5], **_kw(tok))
    assert res.completion_lens_B.tolist() == budgets and res.truncated_B.all()
    full = sample(forced, prompts, max_new_tokens=5, temperature=1.0, row_seeds=[1, 2, 3, 4, 5], **_kw(tok))
    assert [c[:n] for c, n in zip(full.completions(), budgets)] == res.completions()  # same draws, cut short
    bias_V[tok.eos_token_id] = 1e4  # EOS at once: nobody is truncated, whatever the budget
    res = sample(forced, prompts[:2], max_new_tokens=[1, 3], temperature=1.0, generator=None, **_kw(tok))
    assert res.completions() == [[tok.eos_token_id]] * 2 and not res.truncated_B.any()
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(model, prompts[:2], max_new_tokens=[3], temperature=1.0, **_kw(tok))
