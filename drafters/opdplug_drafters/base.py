"""The contract between drafters and the speculative-decoding engine.

A drafter proposes ``k`` tokens per row; the engine verifies them with the target by exact
speculative sampling (``specdec.py``). Positions and features follow one convention:

* a row's sequence is ``x_0 .. x_{n-1}`` (prompt, then accepted tokens, the last one being the
  target's latest sample, whose own target features are not computed yet);
* ``features[b]`` is ``[n - 1, A]``: the target's auxiliary hidden states at positions
  ``0 .. n-2`` (for EAGLE-3, the hidden states entering each of ``feature_layers`` concatenated,
  i.e. Hugging Face ``output_hidden_states[i]`` for layer id ``i``); None for drafters that need
  none (``feature_layers is None``).

``propose`` is a function of its arguments: an implementation may cache (KV caches keyed by row,
cropped when a sequence no longer extends the cached one) but must return what it would return
without the cache.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch


class Drafter(Protocol):
    """What the speculative-decoding engine needs from a drafter."""

    feature_layers: Optional[Sequence[int]]
    """Target layer ids whose input hidden states the drafter reads (EAGLE-3), or None."""

    def propose(
        self,
        sequences: Sequence[Sequence[int]],
        features: Optional[Sequence[torch.Tensor]],
        k: int,
        *,
        temperature: float,
        generator: Optional[torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft ``k`` tokens after each sequence.

        :return: ``draft_ids_B_K`` (long) and ``draft_probs_B_K_V`` (float32): the drafter's
            distribution over the TARGET vocabulary at each drafted position, at ``temperature``
            (one-hot on the argmax when ``temperature == 0``); token ``draft_ids_B_K[b, j]`` was
            drawn from ``draft_probs_B_K_V[b, j]`` given the row and drafts ``< j``.
        """
        ...

    def reset(self) -> None:
        """Forget any cache (a new batch of prompts begins)."""
        ...
