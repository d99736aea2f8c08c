"""``StandaloneDrafter``: a small causal LM with the target's tokenizer drafts for it.

The DistillSpec drafter, and what SGLang serves with ``--speculative-algorithm STANDALONE``:
any causal LM speaking the target's token ids. It keeps its own KV cache per row
(``kvcache.RaggedLlama`` for Llama models; others recompute in full), cropped to the longest
prefix the new sequence shares with what it has cached, so each call only feeds the tokens
accepted since the previous one (one or two per row) and then ``k - 1`` single-token steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from .kvcache import CAPACITY_STEP, ragged_forward
from .specdec import pick_tokens


def _common_prefix(a: list, b: list) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class StandaloneDrafter:
    """A standalone draft model implementing ``base.Drafter``.

    :param model: the drafter's causal LM. Its weights are snapshotted when the first proposal
        is made (build a new drafter to see later weight updates).
    :param vocab_size: the TARGET's vocabulary size: distributions are returned over it (ids the
        drafter's head lacks get probability 0; ids beyond the target's are never drafted).
    """

    feature_layers = None
    """A standalone drafter reads no target features."""

    def __init__(self, model: torch.nn.Module, vocab_size: Optional[int] = None):
        self.model = model
        head = model.get_output_embeddings().weight
        self.own_vocab = head.shape[0]
        self.vocab_size = int(vocab_size) if vocab_size is not None else self.own_vocab
        self.forward = None
        self.cached: list[list[int]] = []

    @classmethod
    def from_pretrained(cls, path: str | Path, vocab_size: Optional[int] = None) -> "StandaloneDrafter":
        """Load a drafter directory (any local Hugging Face causal LM); one-line error if absent."""
        from opdplug_local import models as local

        return cls(local.load_model(str(path), "drafter").eval(), vocab_size)

    def reset(self) -> None:
        """Forget the cache (the weights snapshot stays)."""
        self.cached = []

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.forward.logits(hidden).float()
        V = self.vocab_size
        if self.own_vocab > V:
            logits = logits[..., :V]
        elif self.own_vocab < V:
            logits = torch.cat([logits, logits.new_full((*logits.shape[:-1], V - self.own_vocab), float("-inf"))], dim=-1)
        return logits

    @torch.no_grad()
    def propose(self, sequences: Sequence[Sequence[int]], features, k: int, *, temperature: float,
                generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft ``k`` tokens after each sequence (see ``base.Drafter.propose``)."""
        del features  # a standalone drafter reads none
        B = len(sequences)
        seqs = [list(s) for s in sequences]
        longest = max(len(s) for s in seqs)
        if self.forward is None:
            self.forward = ragged_forward(self.model)
        if len(self.cached) != B:
            self.forward.start(B, longest + k + CAPACITY_STEP)
            self.cached = [[] for _ in range(B)]
        # Keep the longest cached prefix of each row, but always feed its last token (whose
        # logits give the first draft).
        keep = [min(_common_prefix(self.cached[b], seqs[b]), len(seqs[b]) - 1) for b in range(B)]
        self.forward.crop(keep)
        news = [seqs[b][keep[b]:] for b in range(B)]
        width = max(len(n) for n in news)
        ids_B_L = torch.zeros(B, width, dtype=torch.long)
        for b, n in enumerate(news):
            ids_B_L[b, :len(n)] = torch.tensor(n, dtype=torch.long)
        n_new_B = torch.tensor([len(n) for n in news], dtype=torch.long)
        hidden_B_L_H, _ = self.forward.extend(ids_B_L, [len(n) for n in news])
        rows_B = torch.arange(B)
        logits_B_V = self._logits(hidden_B_L_H[rows_B, n_new_B - 1])
        drafts, probs = [], []
        ones = [1] * B
        for j in range(k):
            if j > 0:
                hidden_B_1_H, _ = self.forward.extend(drafts[-1][:, None], ones)
                logits_B_V = self._logits(hidden_B_1_H[:, 0])
            if temperature == 0:  # one-hot distributions are built once, below
                drafts.append(logits_B_V.argmax(-1))
                continue
            token_B, probs_B_V = pick_tokens(logits_B_V, temperature, generator)
            drafts.append(token_B)
            probs.append(probs_B_V)
        draft_B_K = torch.stack(drafts, dim=1)
        probs_B_K_V = (torch.nn.functional.one_hot(draft_B_K, self.vocab_size).float() if temperature == 0
                       else torch.stack(probs, dim=1))
        tail = draft_B_K[:, :k - 1].tolist()
        self.cached = [seqs[b] + tail[b] for b in range(B)]
        return draft_B_K, probs_B_K_V
