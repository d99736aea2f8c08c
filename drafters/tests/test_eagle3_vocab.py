"""Draft vocabulary maps d2t / t2d."""
import pytest
import torch

from opdplug.errors import ConfigError
from opdplug_drafters.eagle3.vocab import build_vocab, check_vocab_maps, count_tokens, full_vocab


def test_most_frequent_ids_round_trip():
    counts = count_tokens([[5, 5, 5, 9, 9, 1], [9, 7, 7, 7, 7]], vocab_size=12)
    d2t, t2d = build_vocab(counts, 4, always=[2])
    target_ids = torch.arange(4) + d2t
    assert target_ids.tolist() == [2, 5, 7, 9]  # EOS forced in; then by count, ascending id order
    assert t2d.sum() == 4 and bool(t2d[target_ids].all())
    assert (d2t >= 0).all() and (d2t[1:] >= d2t[:-1]).all()
    check_vocab_maps(d2t, t2d, 12)


def test_ties_and_fill_are_deterministic():
    counts = torch.zeros(10, dtype=torch.long)
    counts[7] = 3
    d2t, t2d = build_vocab(counts, 3)
    assert (torch.arange(3) + d2t).tolist() == [0, 1, 7]  # unseen ids fill in id order


def test_full_vocab_is_identity():
    d2t, t2d = full_vocab(6)
    check_vocab_maps(d2t, t2d, 6)
    assert d2t.eq(0).all() and t2d.all()


@pytest.mark.parametrize("case", ["out_of_range", "duplicate", "t2d_false", "t2d_extra", "dtype", "size"])
def test_inconsistent_maps_are_rejected(case):
    d2t, t2d = build_vocab(torch.arange(10), 4)
    if case == "out_of_range":
        d2t[-1] = 50
    elif case == "duplicate":
        d2t[1] = d2t[0] - 1
    elif case == "t2d_false":
        t2d[torch.arange(4)[0] + d2t[0]] = False
    elif case == "t2d_extra":
        t2d[~t2d.clone()] = True
    elif case == "dtype":
        d2t = d2t.int()
    elif case == "size":
        t2d = torch.cat([t2d, torch.tensor([False])])
    with pytest.raises(ConfigError):
        check_vocab_maps(d2t, t2d, 10)


def test_bad_sizes():
    with pytest.raises(ConfigError):
        build_vocab(torch.arange(5), 6)
    with pytest.raises(ConfigError):
        build_vocab(torch.arange(5), 1, always=[1, 2])
