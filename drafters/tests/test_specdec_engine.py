"""The speculative-decoding engine: greedy identity, exactness at T > 0, acceptance accounting,
features for EAGLE-3-style drafters, and the ragged KV cache it runs on."""
from __future__ import annotations

import math

import pytest
import torch
import transformers

from opdplug_local import sampling, tiny
from opdplug_local.tasks import SumChain
from opdplug_drafters.kvcache import RaggedLlama, RaggedRecompute
from opdplug_drafters.specdec import SpecDecoder, closed_form_acceptance_length, measure, verify_drafts
from opdplug_drafters.standalone import StandaloneDrafter


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(SumChain().words())


def llama(vocab: int, seed: int, layers: int = 2, hidden: int = 32, kv_heads: int = 2, scale: float = 1.0):
    """A random tiny Llama over ``vocab`` ids; ``scale`` sharpens its distributions."""
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=kv_heads, intermediate_size=2 * hidden, max_position_embeddings=128,
                                      tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def perturbed(model, seed: int, noise: float):
    """A copy of ``model`` with Gaussian noise on every weight: a drafter that agrees often, not always."""
    import copy

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g) * p.std())
    return out


def greedy_reference(model, prompts, budgets, eos_id):
    result = sampling.sample(model, prompts, max_new_tokens=budgets, temperature=0, eos_id=eos_id, pad_id=0)
    return result.completions()


PROMPTS = [[1, 4, 20, 5, 21, 6], [1, 7], [1, 4, 9, 5, 10, 6, 11, 7, 12, 30], [1]]


# ----------------------------------------------------------------------------- greedy identity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [[0], [2], [0, 1, 2, 3]])
def test_greedy_output_identical_to_target_only(tok, rows, dtype):
    target = tiny.build_model("tiny", tok, seed=1).to(dtype).eval()
    prompts = [PROMPTS[r] for r in rows]
    budgets = [23, 17, 30, 9][:len(rows)]
    # An EOS the target really emits mid-way, so rows stop at different rounds.
    free = greedy_reference(target, prompts, 30, eos_id=-1)
    eos = free[0][7]
    expected = greedy_reference(target, prompts, budgets, eos_id=eos)
    for drafter_model in (perturbed(target, 0, 0.3), tiny.build_model("tiny", tok, seed=2).to(dtype)):
        decoder = SpecDecoder(target, StandaloneDrafter(drafter_model.eval()), k=4, temperature=0, eos_id=eos)
        out = decoder.generate(prompts, budgets)
        assert out.completions == expected
        assert decoder.generate_target_only(prompts, budgets).completions == expected


def test_rows_accept_different_counts_in_one_batch(tok):
    """Ragged acceptance really happens (otherwise the identity test above proves little)."""
    target = tiny.build_model("tiny", tok, seed=1).eval()
    decoder = SpecDecoder(target, StandaloneDrafter(perturbed(target, 0, 0.3).eval()), k=4, temperature=0, eos_id=-1)
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[1]]
    out = decoder.generate(prompts, 40)
    stats = out.stats
    assert 1.0 < stats.acceptance_length < 5.0
    assert 0 < stats.accepted_K[0] < stats.attempts_K[0]
    assert out.completions == greedy_reference(target, prompts, 40, eos_id=-1)


# ----------------------------------------------------------------------------- acceptance accounting
class WrongDrafter:
    """Always drafts a token the target does not choose greedily (its argmax + 1)."""

    feature_layers = None

    def __init__(self, target):
        self.target = target

    def reset(self):
        pass

    def propose(self, sequences, features, k, *, temperature, generator):
        rows = []
        for seq in sequences:
            logits = self.target(input_ids=torch.tensor([list(seq)])).logits[0, -1]
            rows.append([(int(logits.argmax()) + 1) % logits.shape[-1]] * k)
        draft = torch.tensor(rows)
        probs = torch.nn.functional.one_hot(draft, self.target.config.vocab_size).float()
        return draft, probs


def test_drafter_equal_to_target_accepts_everything(tok):
    target = tiny.build_model("tiny", tok, seed=1).eval()
    k = 4
    for temperature in (0.0, 1.0):
        decoder = SpecDecoder(target, StandaloneDrafter(target), k=k, temperature=temperature, eos_id=-1)
        out = decoder.generate([PROMPTS[0], PROMPTS[1]], 4 * (k + 1), generator=torch.Generator().manual_seed(0))
        s = out.stats
        assert s.acceptance_length == pytest.approx(k + 1)
        assert s.rounds == 2 * 4 and s.emitted == 2 * 4 * (k + 1)
        assert s.position_acceptance == [1.0] * k
        assert all(abs(p - 1.0) < 1e-4 for p in s.predicted_position_acceptance)
        assert s.closed_form_acceptance_length == pytest.approx(k + 1, abs=1e-3)


def test_always_wrong_drafter_gives_one_token_per_round(tok):
    target = tiny.build_model("tiny", tok, seed=1).eval()
    decoder = SpecDecoder(target, WrongDrafter(target), k=3, temperature=0, eos_id=-1)
    out = decoder.generate([PROMPTS[0], PROMPTS[2]], 7)
    s = out.stats
    assert s.acceptance_length == 1.0 and s.rounds == 14
    assert s.accepted_K == [0, 0, 0] and s.attempts_K == [14, 0, 0]
    assert s.mean_token_acceptance == 0.0 and s.closed_form_acceptance_length == 1.0
    assert out.completions == greedy_reference(target, [PROMPTS[0], PROMPTS[2]], 7, eos_id=-1)


def test_cut_at_budget_counts_only_emitted_tokens(tok):
    target = tiny.build_model("tiny", tok, seed=1).eval()
    decoder = SpecDecoder(target, StandaloneDrafter(target), k=4, temperature=0, eos_id=-1)
    s = decoder.generate([PROMPTS[0]], 7).stats  # 5 tokens, then 2 of the next round's 5
    assert (s.rounds, s.emitted, s.emitted_uncut) == (2, 7, 10)
    assert s.acceptance_length == 3.5 and s.acceptance_length_uncut == 5.0
    assert s.attempts_K == [2, 2, 1, 1]  # the second round's drafts 3 and 4 lie past the budget


def test_closed_form():
    assert closed_form_acceptance_length(0.0, 4) == 1.0
    assert closed_form_acceptance_length(1.0, 4) == 5.0
    assert closed_form_acceptance_length(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


# ----------------------------------------------------------------------------- exactness at T > 0
def chi_square_ok(counts: dict, expected_probs: dict, n: int) -> tuple[bool, float, float]:
    """Pearson chi-square over cells with >= 5 expected (the rest pooled); pass if below
    df + 6 sqrt(2 df): a false alarm is a > 6-sigma event."""
    stat, df, pooled_obs, pooled_exp = 0.0, -1, 0.0, 0.0
    for cell, p in expected_probs.items():
        e = p * n
        o = counts.get(cell, 0)
        if e >= 5:
            stat += (o - e) ** 2 / e
            df += 1
        else:
            pooled_obs += o
            pooled_exp += e
    if pooled_exp >= 5:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        df += 1
    threshold = df + 6 * math.sqrt(2 * df)
    return stat < threshold, stat, threshold


@torch.no_grad()
def exact_continuations(model, prompt, n_tokens, temperature):
    """P(first n_tokens sampled continuation) for every sequence over a small vocabulary."""
    V = model.config.vocab_size
    probs = {(): 1.0}
    for _ in range(n_tokens):
        nxt = {}
        for prefix, pr in probs.items():
            logits = model(input_ids=torch.tensor([list(prompt) + list(prefix)])).logits[0, -1].double()
            p = torch.softmax(logits / temperature, -1).tolist()
            for v in range(V):
                nxt[prefix + (v,)] = pr * p[v]
        probs = nxt
    return probs


@pytest.mark.parametrize("k", [1, 3])
def test_sampling_distribution_equals_target_sampling(k):
    """Many independent rows (one batch) of speculative sampling: the empirical law of the first
    three emitted tokens matches the target's exact law; the drafter's own law does not."""
    V, n_tokens, N = 5, 3, 12000
    temperature = 0.8
    target = llama(V, seed=3, layers=2, scale=6.0)
    drafter_model = llama(V, seed=4, layers=1, scale=4.0)
    prompt = [1, 2, 0]
    exact = exact_continuations(target, prompt, n_tokens, temperature)
    decoder = SpecDecoder(target, StandaloneDrafter(drafter_model), k=k, temperature=temperature, eos_id=-1)
    out = decoder.generate([prompt] * N, n_tokens, generator=torch.Generator().manual_seed(7))
    counts: dict = {}
    for c in out.completions:
        counts[tuple(c)] = counts.get(tuple(c), 0) + 1
    ok, stat, threshold = chi_square_ok(counts, exact, N)
    assert ok, f"chi-square {stat:.1f} >= {threshold:.1f}"
    assert 1.0 < out.stats.acceptance_length < k + 1  # drafts really were rejected sometimes
    # Power: the drafter's own samples are told apart by the same test.
    own = exact_continuations(drafter_model, prompt, n_tokens, temperature)
    assert not chi_square_ok(counts, own, N)[0]


def test_verify_drafts_single_position_law():
    """One draft position, fixed p and q: the emitted token follows p, acceptance is sum min(p, q)."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.6, 0.1, 0.2])
    N = 200_000
    g = torch.Generator().manual_seed(0)
    draft = torch.multinomial(q.expand(N, -1), 1, replacement=True, generator=g)  # [N, 1]
    logits = torch.log(torch.stack([p, torch.full((4,), 0.25)]))[None].expand(N, -1, -1) * 2.0  # T = 2 undoes the x2
    n_acc, nxt, overlap = verify_drafts(logits, draft, q[None, None].expand(N, 1, -1), 2.0, g)
    emitted = torch.where(n_acc == 1, draft[:, 0], nxt)
    freq = torch.bincount(emitted, minlength=4).double() / N
    assert torch.allclose(freq, p.double(), atol=4e-3)
    assert float(n_acc.double().mean()) == pytest.approx(float(torch.minimum(p, q).sum()), abs=4e-3)
    assert torch.allclose(overlap, torch.minimum(p, q).sum().expand(N, 1), atol=1e-6)


# ----------------------------------------------------------------------------- features (EAGLE-3)
class FeatureProbe:
    """Checks the features it receives against Hugging Face's hidden states, drafts greedily from
    the target itself (so everything is accepted)."""

    def __init__(self, target, layers):
        self.target = target
        self.feature_layers = layers
        self.checked = 0

    def reset(self):
        pass

    def propose(self, sequences, features, k, *, temperature, generator):
        rows, width = [], self.target.config.hidden_size
        for seq, feats in zip(sequences, features):
            out = self.target(input_ids=torch.tensor([list(seq)]), output_hidden_states=True)
            expected = torch.cat([out.hidden_states[i][0, :len(seq) - 1] for i in self.feature_layers], dim=-1)
            assert feats.shape == (len(seq) - 1, width * len(self.feature_layers))
            torch.testing.assert_close(feats, expected, atol=2e-5, rtol=1e-4)
            self.checked += 1
            ids = list(seq)
            for _ in range(k):
                ids.append(int(self.target(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            rows.append(ids[len(seq):])
        draft = torch.tensor(rows)
        return draft, torch.nn.functional.one_hot(draft, self.target.config.vocab_size).float()


@pytest.mark.parametrize("fast", [True, False])
def test_features_are_target_hidden_states(tok, fast, monkeypatch):
    if not fast:
        monkeypatch.setenv("OPDPLUG_DISABLE_FASTPATH", "1")
    target = tiny.build_model("tiny", tok, seed=1).eval()
    probe = FeatureProbe(target, (0, 1, 2))
    decoder = SpecDecoder(target, probe, k=3, temperature=0, eos_id=-1)
    assert isinstance(decoder.target, RaggedLlama if fast else RaggedRecompute)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    out = decoder.generate(prompts, 10)
    assert probe.checked >= 6 and out.stats.acceptance_length > 3.0
    assert out.completions == greedy_reference(target, prompts, 10, eos_id=-1)


# ----------------------------------------------------------------------------- the ragged cache
def test_ragged_cache_matches_full_recompute(tok):
    model = tiny.build_model("tiny", tok, seed=1).eval()
    fast, slow = RaggedLlama(model, (0, 2)), RaggedRecompute(model, (0, 2))
    for f in (fast, slow):
        f.start(3, 8)  # small: the fast cache must grow
    g = torch.Generator().manual_seed(0)
    for n_new, crop in (([7, 3, 5], [5, 3, 1]), ([4, 2, 1], [9, 4, 2]), ([6, 6, 1], None)):
        ids = torch.randint(4, 30, (3, max(n_new)), generator=g)
        n = torch.tensor(n_new)
        (h1, a1), (h2, a2) = fast.extend(ids, n), slow.extend(ids, n)
        for b in range(3):
            torch.testing.assert_close(fast.logits(h1[b, :n[b]]), slow.logits(h2[b, :n[b]]), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(a1[b, :n[b]], a2[b, :n[b]], atol=1e-5, rtol=1e-4)
        assert fast.lengths_B.tolist() == slow.lengths_B.tolist()
        if crop:
            fast.crop(torch.tensor(crop))
            slow.crop(torch.tensor(crop))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_standalone_cache_returns_what_no_cache_returns(tok, temperature):
    """``propose`` is a function of its arguments: a drafter reusing its cache across calls (with
    accepted, rejected and unrelated sequences) equals a fresh drafter each time."""
    model = tiny.build_model("tiny", tok, seed=2).eval()
    cached = StandaloneDrafter(model)
    seqs = [list(PROMPTS[0]), list(PROMPTS[1])]
    for step in range(5):
        seed = 100 + step
        d1, q1 = cached.propose(seqs, None, 3, temperature=temperature, generator=torch.Generator().manual_seed(seed))
        d2, q2 = StandaloneDrafter(model).propose(seqs, None, 3, temperature=temperature, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(d1, d2)
        torch.testing.assert_close(q1, q2, atol=1e-6, rtol=1e-5)
        drafts = d1.tolist()
        seqs = [seqs[0] + drafts[0][:step % 4] + [5], seqs[1] + drafts[1] + [6]]  # partial, full acceptance
        if step == 3:
            seqs[0] = [1, 9, 9]  # a row that no longer extends the cache


def test_measure_reports_speed_and_identity(tok):
    target = tiny.build_model("tiny", tok, seed=1).eval()
    report = measure(target, StandaloneDrafter(target), [PROMPTS[0], PROMPTS[1], PROMPTS[2]], max_new_tokens=10,
                     eos_id=-1, k=4, temperature=0, batch_size=2, repetitions=1)
    assert report.identical_to_target is True
    assert report.tokens_per_s > 0 and report.target_tokens_per_s > 0 and report.speedup > 0
    assert report.acceptance_length == 5.0  # per prompt: 5 + 5 tokens in 2 rounds
