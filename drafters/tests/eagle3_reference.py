"""The EAGLE-3 head's drafting computed module by module, one row at a time, from scratch.

The straightforward reading of SGLang's draft worker that ``Eagle3Drafter``'s lean path must
reproduce: the feature-based entries of a row (pairs ``(x_{s+1}, f_s)`` at positions
``0 .. n-2``), then a chain whose step ``j`` feeds a token and the previous output at position
``n-2+j``. Tests only.
"""
from typing import Optional

import torch


@torch.no_grad()
def feature_entries(head, seq: list, feats_N_A: torch.Tensor):
    """Keys, values ``[1, n-1, g, D]`` and pre-norm outputs ``[1, n-1, H]`` of a row's entries."""
    n = len(seq)
    tokens_1_N = torch.tensor(seq[1:n], dtype=torch.long)[None]
    positions_1_N = torch.arange(0, n - 1)[None]
    hidden_1_N_H = head.fuse(feats_N_A[:n - 1][None])
    q, k, v = head.project(tokens_1_N, hidden_1_N_H, positions_1_N)
    mask_1_N_N = torch.ones(n - 1, n - 1, dtype=torch.bool).tril()[None]
    out_1_N_H = head.finish(head.attend(q, k, v, mask_1_N_N), hidden_1_N_H)
    return k, v, out_1_N_H


@torch.no_grad()
def chain_step(head, token: int, out_1_1_H, position: int, keys: list, values: list):
    """One chain step fed ``out_1_1_H`` (the previous step's ``head.carry``): appends its
    key/value to ``keys``/``values``; returns the new (pre-norm) output."""
    q, kj, vj = head.project(torch.tensor([[token]]), out_1_1_H, torch.tensor([[position]]))
    keys.append(kj)
    values.append(vj)
    k_all, v_all = torch.cat(keys, dim=1), torch.cat(values, dim=1)
    return head.finish(head.attend(q, k_all, v_all, torch.ones(1, 1, k_all.shape[1], dtype=torch.bool)), out_1_1_H)


@torch.no_grad()
def reference_propose(head, seq: list, feats_N_A: torch.Tensor, k: int, temperature: float,
                      generator: Optional[torch.Generator] = None):
    """One row's drafts (target ids, ``[k]``) and draft-vocabulary distributions ``[k, Vd]``
    (softmax at ``temperature``; plain softmax of the logits at 0)."""
    d2t = head.draft_to_target_Vd
    k_1, v_1, out_1_N_H = feature_entries(head, seq, feats_N_A)
    keys, values = [k_1], [v_1]
    out = out_1_N_H[:, -1:]
    ids, probs = [], []
    for j in range(k):
        if j:
            out = chain_step(head, int(d2t[ids[-1]]), head.carry(out), len(seq) - 2 + j, keys, values)
        logits = head.logits(out)[0, 0].float()
        if temperature == 0:
            ids.append(int(logits.argmax()))
            probs.append(torch.softmax(logits, -1))
        else:
            p = torch.softmax(logits / temperature, -1)
            ids.append(int(torch.multinomial(p, 1, generator=generator)))
            probs.append(p)
    return d2t[torch.tensor(ids)], torch.stack(probs)
