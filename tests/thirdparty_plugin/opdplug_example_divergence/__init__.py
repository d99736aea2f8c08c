"""An example third-party divergence: Jeffreys, the symmetrized KL, KL(p||q) + KL(q||p)."""
from dataclasses import dataclass

import torch

from opdplug.hookspecs import hookimpl


@dataclass(frozen=True)
class Jeffreys:
    """``scale * (KL(p||q) + KL(q||p))`` over a common support."""

    scale: float = 1.0
    """Multiplier of the sum."""

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        # (p - q) * (log p - log q) summed; entries where both are -inf contribute 0.
        diff = torch.where(
            torch.isinf(student_logp_N_S) & torch.isinf(teacher_logp_N_S),
            torch.zeros_like(student_logp_N_S),
            teacher_logp_N_S - student_logp_N_S,
        )
        return self.scale * ((teacher_logp_N_S.exp() - student_logp_N_S.exp()) * diff).sum(-1)


@hookimpl
def opd_register_divergences(register):
    register("jeffreys", Jeffreys)
