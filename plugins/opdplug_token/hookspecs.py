"""The registry kinds ``opdplug-token`` adds to the kernel (through ``opd_addhooks``): the loss
algebra that ``[loss]`` chooses from."""
from __future__ import annotations

from opdplug.hookspecs import Register, hookspec, registry_kind


@hookspec
def opd_register_divergences(register: Register) -> None:
    """Register token-level divergences, chosen by ``[loss] divergence``.

    :param register: ``register(name, cls)`` where ``cls`` is a frozen dataclass whose fields are
        the divergence's options (``[loss.divergence_options]``) and whose instances are called
        as ``div(student_logp_N_S, teacher_logp_N_S) -> value_N``: log-probs over a common
        support S (rows sum to one; -inf allowed), one value per token.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_estimators(register: Register) -> None:
    """Register single-sample estimators used by the ``sampled`` support (``[loss] estimator``).

    :param register: ``register(name, estimator)``; ``estimator(student_logq_N, teacher_logp_N)
        -> value_N`` evaluated at the sampled token, with a ``claims`` attribute naming the
        divergence whose gradient its backpropagation matches in expectation, and ``sampler``
        naming who must have sampled (``"student"`` or ``"teacher"``).
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_supports(register: Register) -> None:
    """Register supports: over which tokens a divergence is evaluated (``[loss] support``).

    :param register: ``register(name, support)``; see ``opdplug_token.supports`` for the protocol.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
@registry_kind("update rule")
def opd_register_updates(register: Register) -> None:
    """Register update rules turning per-token divergences into a loss (``[loss] update``):
    direct backprop, REINFORCE, importance-sampled advantage, PPO-clip.

    :param register: ``register(name, update)``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """
