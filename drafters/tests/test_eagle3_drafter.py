"""Eagle3Drafter.propose: the base.Drafter contract."""
import pytest
import torch

from opdplug_drafters.eagle3 import Eagle3Drafter, save_head
from opdplug_drafters.eagle3.toy import toy_head, toy_target

from eagle3_reference import reference_propose


@pytest.fixture(scope="module")
def setup():
    model, tok = toy_target(num_layers=4)
    head = toy_head(model, draft_vocab_size=20)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 32, (n,), generator=g).tolist() for n in (7, 12, 9)]
    return model, head, seqs, [_target_features(model, head, s) for s in seqs]


def _target_features(model, head, seq):
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
    return torch.cat([hs[i][0, :-1] for i in head.aux_layers], dim=-1)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_shapes_and_probabilities(setup, temperature):
    model, head, seqs, feats = setup
    drafter = Eagle3Drafter(head)
    assert drafter.feature_layers == (1, 2, 3)
    ids, probs = drafter.propose(seqs, feats, 5, temperature=temperature, generator=torch.Generator().manual_seed(1))
    V = model.config.vocab_size
    assert ids.shape == (3, 5) and ids.dtype == torch.long
    assert probs.shape == (3, 5, V) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5))
    assert probs[..., ~head.t2d].abs().max() == 0  # nothing outside the draft vocabulary
    assert bool(head.t2d[ids].all())
    assert bool((probs.gather(-1, ids[..., None]) > 0).all())  # each draft drawn from its distribution
    if temperature == 0:
        assert bool(((probs == 0) | (probs == 1)).all())


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_lean_path_equals_module_by_module_drafting(setup, temperature):
    """The fused, cached drafting equals the head's modules applied one row at a time."""
    model, head, seqs, feats = setup
    drafter = Eagle3Drafter(head)
    d2t = head.draft_to_target_Vd
    for rows in ([s[:n] for s, n in zip(seqs, (5, 8, 9))], seqs):  # the second call extends the cache
        row_feats = [_target_features(model, head, r) for r in rows]
        if temperature == 0:
            ids, probs = drafter.propose(rows, row_feats, 5, temperature=0.0, generator=None)
            for b, row in enumerate(rows):
                ref_ids, _ = reference_propose(head, row, row_feats[b], 5, 0.0)
                assert torch.equal(ids[b], ref_ids)
            continue
        for b, row in enumerate(rows):  # one row per call: the generator's draws line up
            ids, probs = drafter.propose([row], [row_feats[b]], 5, temperature=temperature,
                                         generator=torch.Generator().manual_seed(b))
            ref_ids, ref_probs = reference_propose(head, row, row_feats[b], 5, temperature,
                                                   torch.Generator().manual_seed(b))
            assert torch.equal(ids[0], ref_ids)
            torch.testing.assert_close(probs[0][:, d2t], ref_probs, atol=1e-6, rtol=1e-5)


def test_a_long_cached_row_beside_a_fresh_one(setup):
    """Rows advancing by very different amounts: the padded slots of the catch-up forward must
    fit in the cache (a long cached row plus a long fresh row)."""
    model, head, _, _ = setup
    g = torch.Generator().manual_seed(5)
    long_a = torch.randint(3, 32, (150,), generator=g).tolist()
    long_b = torch.randint(3, 32, (150,), generator=g).tolist()
    cached, fresh = Eagle3Drafter(head), Eagle3Drafter(head, use_cache=False)
    rounds = [[long_a, long_b[:3]], [long_a + [5], long_b]]  # row 0 keeps 149 entries, row 1 adds 147
    for rows in rounds:
        feats = [_target_features(model, head, r) for r in rows]
        a = cached.propose(rows, feats, 3, temperature=0.0, generator=None)
        b = fresh.propose(rows, feats, 3, temperature=0.0, generator=None)
        assert torch.equal(a[0], b[0])


def test_cache_equals_no_cache(setup):
    model, head, seqs, feats = setup
    cached, fresh = Eagle3Drafter(head), Eagle3Drafter(head, use_cache=False)
    rounds = [
        [s[:n] for s, n in zip(seqs, (5, 8, 9))],
        [s[:n] for s, n in zip(seqs, (7, 12, 9))],  # rows extend (by 2, 4, 0 tokens)
        [s[:n] for s, n in zip(seqs, (6, 12, 4))],  # rows shrink: the cache is cropped
        [s[:5] + [3, 4] for s in seqs],  # rows diverge from the cache
    ]
    for rows in rounds:
        feats_rows = [_target_features(model, head, r) for r in rows]
        for temperature in (0.0, 1.0):
            a = cached.propose(rows, feats_rows, 4, temperature=temperature, generator=torch.Generator().manual_seed(3))
            b = fresh.propose(rows, feats_rows, 4, temperature=temperature, generator=torch.Generator().manual_seed(3))
            assert torch.equal(a[0], b[0])
            torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-5)
    # Same tokens with different features are different entries: the cache must notice.
    rows = [seqs[0][:7]]
    other = [_target_features(model, head, rows[0]) * 1.5]
    a = cached.propose(rows, other, 3, temperature=0.0, generator=None)
    b = fresh.propose(rows, other, 3, temperature=0.0, generator=None)
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-5)


def test_rows_are_independent(setup):
    model, head, seqs, feats = setup
    drafter = Eagle3Drafter(head, use_cache=False)
    ids, probs = drafter.propose(seqs, feats, 4, temperature=0.0, generator=None)
    for b in range(3):
        one_ids, one_probs = drafter.propose([seqs[b]], [feats[b]], 4, temperature=0.0, generator=None)
        assert torch.equal(one_ids[0], ids[b])


def test_from_pretrained_round_trip(setup, tmp_path):
    model, head, seqs, feats = setup
    save_head(head, tmp_path / "run" / "head")
    loaded = Eagle3Drafter.from_pretrained(tmp_path / "run", model)  # a run dir resolves to head/
    a = Eagle3Drafter(head).propose(seqs, feats, 3, temperature=0.0, generator=None)
    b = loaded.propose(seqs, feats, 3, temperature=0.0, generator=None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_features_are_rejected(setup):
    model, head, seqs, feats = setup
    with pytest.raises(ValueError):
        Eagle3Drafter(head).propose(seqs, None, 2, temperature=0.0, generator=None)
    with pytest.raises(ValueError):
        Eagle3Drafter(head).propose(seqs[:1], [feats[1]], 2, temperature=0.0, generator=None)
