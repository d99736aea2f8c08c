"""The drafter both example kinds load: next-token log-probs given the previous token."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


class BigramDrafter:
    """A ``opdplug_drafters.base.Drafter``: drafts from ``logp_V_V[previous token]``."""

    feature_layers = None

    def __init__(self, counts_V_V: torch.Tensor, smoothing: float):
        self.logp_V_V = torch.log_softmax(torch.log(counts_V_V.float() + smoothing), dim=-1)

    @classmethod
    def from_logits(cls, logits_V_V: torch.Tensor) -> "BigramDrafter":
        """A drafter from a table of next-token logits (``table.py``'s learnt kind)."""
        drafter = cls.__new__(cls)
        drafter.logp_V_V = torch.log_softmax(logits_V_V.float(), dim=-1)
        return drafter

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def propose(self, sequences: Sequence[Sequence[int]], features, k: int, *, temperature: float,
                generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        previous_B = torch.tensor([s[-1] for s in sequences], dtype=torch.long)
        drafts, probs = [], []
        for _ in range(k):
            logp_B_V = self.logp_V_V[previous_B]
            if temperature == 0:
                token_B = logp_B_V.argmax(-1)
                p_B_V = torch.nn.functional.one_hot(token_B, logp_B_V.shape[-1]).float()
            else:
                p_B_V = torch.softmax(logp_B_V / temperature, dim=-1)
                token_B = torch.multinomial(p_B_V, 1, generator=generator).squeeze(-1)
            drafts.append(token_B)
            probs.append(p_B_V)
            previous_B = token_B
        return torch.stack(drafts, dim=1), torch.stack(probs, dim=1)
