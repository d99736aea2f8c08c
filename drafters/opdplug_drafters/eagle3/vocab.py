"""The draft vocabulary: which target ids the head can propose, as EAGLE-3's ``d2t`` / ``t2d`` maps.

The draft vocabulary is the ``draft_vocab_size`` target ids most frequent in the training
completions (ties broken by lower id, so the result is deterministic), always including the ids
the head must be able to propose whatever the counts say (EOS: a draft that cannot end a
sequence is rejected at every end). Draft ids are assigned in ascending target-id order, so
``d2t`` (the offsets ``target_id - draft_id``) is non-negative and non-decreasing, as in the
public EAGLE-3 checkpoints. If fewer distinct ids were seen than asked for, the rest is filled
with unseen ids in id order: the head always has exactly ``draft_vocab_size`` outputs.

* ``d2t`` [draft_vocab] int64: ``target_id = draft_id + d2t[draft_id]`` (SGLang reads it as
  ``hot_token_id = d2t + arange``).
* ``t2d`` [vocab] bool: True on the target ids in the draft vocabulary.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch

from opdplug.errors import ConfigError


def count_tokens(sequences: Iterable[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """Occurrences of every id in ``sequences`` as a long tensor ``[vocab_size]``."""
    counts = Counter()
    for seq in sequences:
        counts.update(int(t) for t in seq)
    out = torch.zeros(vocab_size, dtype=torch.long)
    for token, n in counts.items():
        if not 0 <= token < vocab_size:
            raise ConfigError(f"token id {token} is outside the target's vocabulary of {vocab_size}")
        out[token] = n
    return out


def build_vocab(
    counts_V: torch.Tensor, draft_vocab_size: int, *, always: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d2t_Vd, t2d_V)`` for the ``draft_vocab_size`` most frequent ids of ``counts_V``.

    :param counts_V: occurrences of each target id (e.g. ``count_tokens`` of the completions).
    :param draft_vocab_size: number of draft ids, ``1 .. vocab_size``.
    :param always: ids included whatever their count (e.g. EOS).
    """
    V = int(counts_V.shape[0])
    if not 1 <= draft_vocab_size <= V:
        raise ConfigError(f"draft_vocab_size = {draft_vocab_size} must be in 1..{V} (the target's vocabulary)")
    always = sorted({int(t) for t in always})
    if any(not 0 <= t < V for t in always):
        raise ConfigError(f"ids {always} to always include must be within the vocabulary of {V}")
    if len(always) > draft_vocab_size:
        raise ConfigError(f"draft_vocab_size = {draft_vocab_size} cannot hold the {len(always)} ids that must be included")
    # Stable descending sort by count: equal counts keep ascending id order.
    order = sorted(range(V), key=lambda t: (-int(counts_V[t]), t))
    chosen = list(always)
    taken = set(chosen)
    for t in order:
        if len(chosen) == draft_vocab_size:
            break
        if t not in taken:
            chosen.append(t)
            taken.add(t)
    target_ids_Vd = torch.tensor(sorted(chosen), dtype=torch.long)
    d2t_Vd = target_ids_Vd - torch.arange(draft_vocab_size, dtype=torch.long)
    t2d_V = torch.zeros(V, dtype=torch.bool)
    t2d_V[target_ids_Vd] = True
    check_vocab_maps(d2t_Vd, t2d_V, V)
    return d2t_Vd, t2d_V


def full_vocab(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity maps (draft vocabulary = the whole target vocabulary)."""
    return torch.zeros(vocab_size, dtype=torch.long), torch.ones(vocab_size, dtype=torch.bool)


def check_vocab_maps(d2t_Vd: torch.Tensor, t2d_V: torch.Tensor, vocab_size: int) -> None:
    """Raise a one-line ``ConfigError`` unless ``d2t`` and ``t2d`` describe the same draft vocabulary
    of distinct ids within the target's ``vocab_size`` (``t2d[i + d2t[i]]`` true for every draft id
    ``i``, and ``t2d`` true nowhere else)."""
    if d2t_Vd.dtype != torch.int64 or d2t_Vd.dim() != 1:
        raise ConfigError(f"d2t must be a 1-D int64 tensor, got {d2t_Vd.dtype} of shape {tuple(d2t_Vd.shape)}")
    if t2d_V.dtype != torch.bool or tuple(t2d_V.shape) != (vocab_size,):
        raise ConfigError(
            f"t2d must be a bool tensor of the target's vocabulary size ({vocab_size},), "
            f"got {t2d_V.dtype} of shape {tuple(t2d_V.shape)}"
        )
    Vd = d2t_Vd.shape[0]
    if not 1 <= Vd <= vocab_size:
        raise ConfigError(f"d2t has {Vd} entries; a draft vocabulary holds 1..{vocab_size} ids")
    target_ids = torch.arange(Vd) + d2t_Vd.cpu()
    outside = target_ids[(target_ids < 0) | (target_ids >= vocab_size)]
    if outside.numel():
        raise ConfigError(
            f"d2t maps draft ids to {outside[:3].tolist()}, outside the target's vocabulary 0..{vocab_size - 1}"
        )
    if target_ids.unique().numel() != Vd:
        raise ConfigError("d2t maps two draft ids to the same target id; rebuild the maps with vocab.build_vocab")
    t2d = t2d_V.cpu()
    if not bool(t2d[target_ids].all()):
        missing = target_ids[~t2d[target_ids]][:3].tolist()
        raise ConfigError(f"t2d is false at target ids {missing} that d2t maps to: the two maps disagree")
    if int(t2d.sum()) != Vd:
        raise ConfigError(
            f"t2d marks {int(t2d.sum())} target ids but d2t has {Vd} draft ids: the two maps disagree"
        )
