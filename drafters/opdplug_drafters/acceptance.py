"""What speculative decoding is measured by: ``SpecStats`` (acceptance counts of one or more
generations, added with ``merge``), the closed-form acceptance length, and ``SpecReport`` (one
drafter on one target at one temperature and batch size, what ``specdec.measure`` returns).

Acceptance length is counted as SGLang's ``spec_accept_length``: tokens emitted per target
verify forward per row, bonus token included (1 = every first draft rejected, ``k + 1`` = every
draft accepted). The rate of each draft position is measured (accepted / judged) and predicted
(mean ``1 - TVD(p_j, q_j)`` over the same rounds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SpecStats:
    """Counts of one or more speculative generations (add them with ``merge``)."""

    k: int
    """Draft tokens per round."""
    rounds: int = 0
    """(row, verify round) pairs: target verify forwards per row."""
    emitted: int = 0
    """Tokens emitted, after cutting at EOS and at the budget."""
    emitted_uncut: int = 0
    """Sum of accepted drafts + 1 over rounds, before the cut: the drafter/target agreement alone."""
    attempts_K: list = field(default_factory=list)
    """Per draft position j: rounds in which draft j was judged (all before it accepted, none of
    them EOS, within the budget)."""
    accepted_K: list = field(default_factory=list)
    """Per draft position j: how many of those accepted it."""
    overlap_K: list = field(default_factory=list)
    """Per draft position j: sum over those rounds of ``1 - TVD(p_j, q_j)``."""
    target_forwards: int = 0
    """Batched target forward calls (verify rounds, prefill excluded)."""

    def __post_init__(self):
        for name in ("attempts_K", "accepted_K", "overlap_K"):
            if not getattr(self, name):
                setattr(self, name, [0] * self.k if name != "overlap_K" else [0.0] * self.k)

    def merge(self, other: "SpecStats") -> None:
        self.rounds += other.rounds
        self.emitted += other.emitted
        self.emitted_uncut += other.emitted_uncut
        self.target_forwards += other.target_forwards
        for j in range(self.k):
            self.attempts_K[j] += other.attempts_K[j]
            self.accepted_K[j] += other.accepted_K[j]
            self.overlap_K[j] += other.overlap_K[j]

    @property
    def acceptance_length(self) -> float:
        """Tokens emitted per target verify forward per row, bonus token included (SGLang's
        ``spec_accept_length``): 1 = every first draft rejected, ``k + 1`` = every draft accepted."""
        return self.emitted / max(self.rounds, 1)

    @property
    def acceptance_length_uncut(self) -> float:
        """The same before EOS/budget cuts (what the drafter's agreement alone would give on
        endless sequences)."""
        return self.emitted_uncut / max(self.rounds, 1)

    @property
    def position_acceptance(self) -> list[float]:
        """P(draft j accepted | drafts before it accepted), j = 1..k (NaN where never judged)."""
        return [a / n if n else math.nan for a, n in zip(self.accepted_K, self.attempts_K)]

    @property
    def predicted_position_acceptance(self) -> list[float]:
        """Mean ``1 - TVD(p_j, q_j)`` over the same rounds: the acceptance rate theory predicts."""
        return [o / n if n else math.nan for o, n in zip(self.overlap_K, self.attempts_K)]

    @property
    def mean_token_acceptance(self) -> float:
        """b: mean ``1 - TVD(p, q)`` over every judged draft."""
        return sum(self.overlap_K) / max(sum(self.attempts_K), 1)

    @property
    def closed_form_acceptance_length(self) -> float:
        """``(1 - b^(k+1)) / (1 - b)``: expected tokens per round if every draft were accepted
        independently with probability b."""
        return closed_form_acceptance_length(self.mean_token_acceptance, self.k)


def closed_form_acceptance_length(b: float, k: int) -> float:
    """Expected tokens per verify round, ``(1 - b^(k+1)) / (1 - b)`` (``k + 1`` at b = 1)."""
    if b >= 1.0:
        return float(k + 1)
    return (1.0 - b ** (k + 1)) / (1.0 - b)


@dataclass(frozen=True)
class SpecReport:
    """Acceptance and speed of one drafter on one target at one temperature and batch size."""

    k: int
    """Draft tokens per round."""
    temperature: float
    """Serving temperature (0: greedy)."""
    batch_size: int
    """Prompts decoded together."""
    prompts: int
    """Held-out prompts decoded."""
    acceptance_length: float
    """Tokens emitted per target verify forward, bonus included (SGLang's ``spec_accept_length``)."""
    acceptance_length_uncut: float
    """The same before cutting at EOS and budget (the last round of a sequence often ends early)."""
    position_acceptance: list
    """P(draft j accepted | drafts before it accepted), j = 1..k."""
    predicted_position_acceptance: list
    """Mean ``1 - TVD(p_j, q_j)`` at each position: what theory predicts for the line above."""
    mean_token_acceptance: float
    """b: mean ``1 - TVD`` over every judged draft."""
    closed_form_acceptance_length: float
    """``(1 - b^(k+1)) / (1 - b)``."""
    tokens_per_s: float
    """Speculative decoding, median over repetitions."""
    target_tokens_per_s: float
    """Target-only decoding on the same forward machinery, median over repetitions."""
    speedup: float
    """Median over repetitions of (speculative tokens/s) / (target-only tokens/s), each
    repetition timing both on every batch back to back."""
    repetitions: int
    """Timed repetitions of each (alternated)."""
    identical_to_target: Optional[bool]
    """Greedy only: whether every completion equals target-only greedy decoding's."""
    tokens: int
    """Tokens emitted in the statistics pass."""

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)
