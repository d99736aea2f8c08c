"""The config table ``opdplug-token`` owns: ``[loss]``, the loss algebra chosen by name."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LossOptions:
    """``[loss]``: support x divergence (or estimator) x update."""

    support: str = "full"
    """Where the divergence is evaluated: sampled, student_topk, teacher_topk, full."""
    divergence: str = "reverse_kl"
    """Registered divergence (used by every support except ``sampled``)."""
    estimator: str = "k2"
    """Registered single-sample estimator (used by the ``sampled`` support)."""
    update: str = "direct"
    """Registered update rule: direct, reinforce, advantage, ppo_clip."""
    top_k: int = 16
    """k of the top-k supports."""
    chunk_size: int = 1024
    """Tokens per chunk of the full-vocabulary loss ([chunk, V] is the largest tensor)."""
    divergence_options: dict = field(default_factory=dict)
    """Options of the divergence, e.g. ``beta`` for jsd."""
    update_options: dict = field(default_factory=dict)
    """Options of the update rule, e.g. ``eps`` for ppo_clip."""


