"""An example third-party divergence: Jeffreys, the symmetrized KL, KL(p||q) + KL(q||p).

It also shows the two ways a plugin extends opdplug beyond registering a component: the
component's optional lifecycle (``setup(ctx)`` once the models are loaded, ``metrics()`` merged
into every step's metrics) and a hookspec of its own (``opd_addhooks``): the registry kind
``jeffreys_balances``, how the two KLs are weighed, chosen by ``[loss.divergence_options] balance``.
"""
from dataclasses import dataclass, field

import torch

from opdplug.hookspecs import hookimpl

from . import hookspecs


@dataclass(frozen=True)
class Balance:
    """Weights of KL(p||q) (teacher p: mode-covering) and KL(q||p) (student q: mode-seeking)."""

    forward: float = 1.0
    reverse: float = 1.0


@dataclass(frozen=True)
class Jeffreys:
    """``scale * (forward * KL(p||q) + reverse * KL(q||p))`` over a common support, the weights
    from the balance chosen by name (Jeffreys itself with the default, ``even``)."""

    scale: float = 1.0
    """Multiplier of the sum."""
    balance: str = ""
    """A registered Jeffreys balance (``opdplug plugins`` lists them); empty: the default."""
    _run: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def setup(self, ctx) -> None:
        """The models are loaded: resolve the balance (an unknown name is a one-line error
        before any step)."""
        self._run["balance"] = ctx.component("jeffreys_balances", self.balance, {}, "loss.divergence_options.balance")

    def metrics(self) -> dict:
        """The weights in use, logged with every step."""
        weights = self._run.get("balance", Balance())
        return {"jeffreys/forward_weight": weights.forward, "jeffreys/reverse_weight": weights.reverse}

    def __call__(self, student_logp_N_S: torch.Tensor, teacher_logp_N_S: torch.Tensor) -> torch.Tensor:
        w = self._run.get("balance", Balance())  # Jeffreys itself until set up
        # forward * p (log p - log q) + reverse * q (log q - log p) = (forward p - reverse q)(log p - log q),
        # summed; entries where both are -inf contribute 0.
        diff = torch.where(
            torch.isinf(student_logp_N_S) & torch.isinf(teacher_logp_N_S),
            torch.zeros_like(student_logp_N_S),
            teacher_logp_N_S - student_logp_N_S,
        )
        weighted = w.forward * teacher_logp_N_S.exp() - w.reverse * student_logp_N_S.exp()
        return self.scale * (weighted * diff).sum(-1)


@hookimpl
def opd_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def opd_register_jeffreys_balances(register):
    register("even", Balance(1.0, 1.0), default=True)
    register("mode_seeking", Balance(forward=0.5, reverse=1.5))


@hookimpl
def opd_register_divergences(register):
    register("jeffreys", Jeffreys)
