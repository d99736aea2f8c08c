"""Hook specifications: everything a plugin can implement.

Three families, in the order a run meets them:

* Lifecycle hooks, called once: ``opd_add_options`` (declare your config table),
  ``opd_configure`` (the validated config is ready), ``opd_unconfigure`` (the run ends).
* Registry hooks, called once when the registry is built: each receives a ``register(name, obj)``
  callback and adds named components the config can then choose by name. Registering a name
  twice is an error naming both plugins.
* Stage hooks, called by the training loop every step, for every micro-batch, in this order:
  ``opd_rollout`` -> ``opd_score`` -> ``opd_credit`` -> (student forward) -> ``opd_loss``;
  then ``opd_step_end`` once per optimizer step. Each stage hook is ``firstresult``: the first
  non-None return wins. The built-in implementation of each is ``trylast`` and dispatches by the
  component names in the config, so a plugin overrides a stage by returning a value, or wraps it
  with ``@hookimpl(wrapper=True)`` (timing, caching, filtering) and ``yield``.

All hooks take keyword arguments; implement only the ones you need, with any subset of the
arguments (pluggy passes what you name).

Registered components are either a frozen dataclass *class*, instantiated once per run with the
options the config gives it (validated against its fields: unknown keys and wrong types are
one-line errors), or a ready-made instance for components without options.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .context import RunContext
    from .types import Credit, LossOutput, Prompt, RolloutBatch, StudentOutputs, TeacherScores

PROJECT = "opdplug"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Any], None]


# ----------------------------------------------------------------------------- lifecycle
@hookspec
def opd_add_options(register: Register) -> None:
    """Declare the config table this plugin reads.

    :param register: ``register(table_name, dataclass_type)``. The TOML table ``[table_name]`` is
        validated into an instance of ``dataclass_type`` (unknown keys and wrong types are
        one-line errors) and handed back as ``ctx.config.plugin(table_name)``. A missing table
        gives the dataclass defaults.
    :return: nothing.

    Called once, while the config is loaded, before validation. Not firstresult.
    """


@hookspec
def opd_configure(ctx: "RunContext") -> None:
    """The config is validated and the models are loaded; the loop is about to start.

    :param ctx: the run context (config, registry, student, teacher, accelerator).
    :return: nothing. Raise ``opdplug.errors.ConfigError`` to reject the configuration.

    Called once per run, after ``opd_add_options`` and the registry hooks, before step 0
    (and before the pre-flight self-test). Not firstresult.
    """


@hookspec
def opd_unconfigure(ctx: "RunContext") -> None:
    """The run is ending (normally or by an exception); release what ``opd_configure`` took.

    :param ctx: the run context.
    :return: nothing.

    Called once per run, last. Not firstresult.
    """


# ----------------------------------------------------------------------------- registries
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
def opd_register_updates(register: Register) -> None:
    """Register update rules turning per-token divergences into a loss (``[loss] update``):
    direct backprop, REINFORCE, importance-sampled advantage, PPO-clip.

    :param register: ``register(name, update)``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_samplers(register: Register) -> None:
    """Register rollout samplers (``[rollout] sampler``): who writes the completions.

    :param register: ``register(name, cls)``; instances (options from ``[rollout.options]``) are
        called ``sampler(ctx, prompts, step) -> RolloutBatch``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_scorers(register: Register) -> None:
    """Register teachers/scorers (``[teacher] scorer``) that turn a batch into ``TeacherScores``.

    :param register: ``register(name, cls_or_instance)``; options from ``[teacher.options]``;
        called ``scorer(ctx, batch) -> TeacherScores``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_credit_schemes(register: Register) -> None:
    """Register credit-assignment schemes (``[credit] scheme``).

    :param register: ``register(name, cls)``; ``cls`` is a frozen dataclass of the scheme's
        options (``[credit.options]``) whose instances are called ``scheme(batch, scores) -> Credit``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_verifiers(register: Register) -> None:
    """Register outcome verifiers (``[credit] verifier``) that give a reward per sequence.

    :param register: ``register(name, verifier)``; ``verifier(ctx, batch) -> rewards_B``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_tasks(register: Register) -> None:
    """Register prompt sources (``[task] name``): synthetic tasks or datasets on disk.

    :param register: ``register(name, factory)``; ``factory(tokenizer=..., options=...) -> Task``
        (see ``opdplug.tasks.Task``). If the factory has an ``options_class`` (a dataclass),
        ``[task.options]`` is validated into it first.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_environments(register: Register) -> None:
    """Register multi-turn environments (gymnasium ids or factories) for agent distillation.

    :param register: ``register(name, env_factory)``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_drafter_kinds(register: Register) -> None:
    """Register speculative-decoding drafter kinds (standalone, EAGLE-3, ...).

    :param register: ``register(name, drafter_kind)``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_commands(register: Register) -> None:
    """Register CLI sub-commands of ``opdplug``.

    :param register: ``register(name, command)`` where ``command`` has ``help: str``,
        ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
    :return: nothing.

    Called once when the CLI starts. Not firstresult.
    """


# ----------------------------------------------------------------------------- stages
@hookspec(firstresult=True)
def opd_rollout(ctx: "RunContext", prompts: "list[Prompt]", step: int) -> "Optional[RolloutBatch]":
    """Produce the token sequences of one micro-batch.

    :param ctx: the run context.
    :param prompts: this process's task instances of this micro-batch (deterministic in seed and
        step), each with its index in the step's global batch (``Prompt.row``): seed sampling
        per row from it (``ctx.row_seeds``) so the draws do not depend on the process count.
    :param step: the optimizer step being prepared (0-based).
    :return: a ``RolloutBatch`` with exact token ids and sampling log-probs, or None to defer.

    firstresult. Called for every micro-batch of every step, before any loss is computed, with
    the student's current weights. The built-in (trylast) calls the sampler named by
    ``[rollout] sampler``. Wrappers see the batch and may return a filtered one.
    """


@hookspec(firstresult=True)
def opd_score(ctx: "RunContext", batch: "RolloutBatch") -> "Optional[TeacherScores]":
    """Get the teacher's log-probs on every token of ``batch``.

    :param ctx: the run context.
    :param batch: the rollout of this micro-batch.
    :return: ``TeacherScores`` aligned with ``batch``, or None to defer.

    firstresult. Called once per micro-batch, right after ``opd_rollout``, under ``no_grad``.
    The built-in (trylast) calls the scorer named by ``[teacher] scorer``.
    """


@hookspec(firstresult=True)
def opd_credit(
    ctx: "RunContext", batch: "RolloutBatch", scores: "TeacherScores"
) -> "Optional[Credit]":
    """Assign per-token weights and advantages.

    :param ctx: the run context.
    :param batch: the rollout.
    :param scores: the teacher's scores on it.
    :return: ``Credit`` aligned with ``batch``, or None to defer.

    firstresult. Called once per micro-batch, after ``opd_score``, under ``no_grad``. The
    built-in (trylast) calls the scheme named by ``[credit] scheme``.
    """


@hookspec(firstresult=True)
def opd_loss(
    ctx: "RunContext",
    batch: "RolloutBatch",
    scores: "TeacherScores",
    credit: "Credit",
    student: "StudentOutputs",
) -> "Optional[LossOutput]":
    """Compute the token-summed loss of one micro-batch.

    :param ctx: the run context.
    :param batch: the rollout.
    :param scores: the teacher's scores.
    :param credit: the per-token weights/advantages.
    :param student: the student's forward pass with gradients.
    :return: ``LossOutput`` (sum over tokens; the loop normalizes by the global token count),
        or None to defer.

    firstresult. Called once per micro-batch, after the student's forward pass, with gradients
    enabled. The built-in (trylast) composes ``[loss] support``, ``divergence``/``estimator`` and
    ``update``.
    """


@hookspec
def opd_step_end(ctx: "RunContext", step: int, metrics: dict) -> None:
    """An optimizer step finished.

    :param ctx: the run context.
    :param step: the step that finished (0-based).
    :param metrics: the step's logged metrics (plugins may add keys; they are logged after).
    :return: nothing.

    Called once per optimizer step on every process, after the optimizer step and before
    logging and checkpointing. Not firstresult.
    """
