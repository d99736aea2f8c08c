"""Hook specifications of the kernel: the lifecycle, the stages of a step, and the registries
the kernel's own config tables choose from. Plugins add their own hookspecs (and with them
their own registry kinds) through ``opd_addhooks``, as pytest plugins do with
``pytest_addhooks``.

Four families, in the order a run meets them:

* Lifecycle, called once: ``opd_addhooks`` (add your hookspecs), ``opd_add_options`` (declare
  your config table), ``opd_validate`` (resolve your component names before anything loads),
  ``opd_configure`` (models are loaded), ``opd_preflight`` (checks before step 0),
  ``opd_unconfigure`` (the run ends).
* Registries, called once when the registry is built. Every hookspec named
  ``opd_register_<kind>`` is a registry kind: its implementations receive
  ``register(name, obj, default=False)`` and add named components the config chooses by name.
  ``default=True`` makes a component what an empty name in the config means (one per kind).
  The kernel declares the kinds its own tables choose from (samplers, scorers, credit schemes,
  verifiers, tasks, commands); a plugin declares more by adding ``opd_register_<kind>`` specs.
* Backend, firstresult: ``opd_load_models``, ``opd_student_forward``, ``opd_save_model``: the
  plugin that runs the models (``opdplug-local`` for Hugging Face models in the process).
* Stages, called every step for every micro-batch, in this order: ``opd_rollout`` ->
  ``opd_score`` -> ``opd_credit`` -> ``opd_student_forward`` -> ``opd_loss``; then
  ``opd_step_end`` once per optimizer step. Each stage hook is ``firstresult``: the first
  non-None return wins. The kernel's own implementations of rollout, score and credit are
  ``trylast`` and call the component the config names; ``opd_loss`` has none in the kernel (the
  plugin that owns ``[loss]`` provides it). A plugin overrides a stage by returning a value, or
  wraps it with ``@hookimpl(wrapper=True)`` and ``yield``.

All hooks take keyword arguments; implement only the ones you need, with any subset of the
arguments (pluggy passes what you name).

Components (what registries hold) are a frozen dataclass *class*, instantiated once per run with
the options the config gives it, or a ready-made instance. A component may implement the
optional lifecycle ``opdplug.types.Component``: ``setup(ctx)`` once the models are loaded,
``metrics()`` merged into every step's metrics, ``close()`` when the run ends.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from .context import RunContext
    from .types import Credit, LoadedModels, LossOutput, Prompt, RolloutBatch, StudentOutputs, TeacherScores

PROJECT = "opdplug"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]
REGISTRY_PREFIX = "opd_register_"


def registry_kind(label: str):
    """Mark a registry hookspec with how one of its components is called in messages
    (``registry_kind("update rule")``); without it the label is the kind's name, singular."""

    def mark(function):
        function.opd_kind_label = label
        return function

    return mark


# ----------------------------------------------------------------------------- lifecycle
@hookspec(historic=True)
def opd_addhooks(pluginmanager: "pluggy.PluginManager") -> None:
    """Add this plugin's own hookspecs: ``pluginmanager.add_hookspecs(my_hookspecs_module)``.

    :param pluginmanager: the run's pluggy plugin manager.
    :return: nothing.

    Called once when the plugin is registered (historic: plugins registered later are called
    too). A spec named ``opd_register_<kind>`` adds the registry kind ``<kind>``.
    """


@hookspec
def opd_add_options(register: Register) -> None:
    """Declare the config tables this plugin reads.

    :param register: ``register(table_name, dataclass_type)``. The TOML table ``[table_name]`` is
        validated into an instance of ``dataclass_type`` (unknown keys and wrong types are
        one-line errors) and read back as ``ctx.config.<table_name>``. A missing table gives
        the dataclass defaults.
    :return: nothing.

    Called once, while the config is loaded, before validation. Not firstresult.
    """


@hookspec
def opd_validate(ctx: "RunContext") -> None:
    """Resolve the component names of your own tables now (``ctx.component(...)``), so a typo
    fails before any model is loaded or anything is written.

    :param ctx: the run context; ``ctx.config`` is set, models are not loaded yet.
    :return: nothing. Raise ``opdplug.errors.ConfigError`` to reject the configuration.

    Called once per run, right after the kernel resolved its own components. Not firstresult.
    """


@hookspec
def opd_configure(ctx: "RunContext") -> None:
    """The config is validated and the models are loaded; the loop is about to start.

    :param ctx: the run context (config, registry, student, teacher, accelerator).
    :return: nothing. Raise ``opdplug.errors.ConfigError`` to reject the configuration.

    Called once per run, after every component's ``setup(ctx)``, before step 0 (and before
    the pre-flight checks). Not firstresult.
    """


@hookspec
def opd_preflight(ctx: "RunContext") -> "Optional[dict]":
    """Check, before step 0, that training makes sense (tokenizers agree, a student scored
    against itself gives a loss of about zero).

    :param ctx: the run context, configured.
    :return: a dict of findings for ``opdplug check`` to print, or None. Raise
        ``opdplug.errors.PreflightError`` to stop the run.

    Called once by a fresh run (not on resume) and by ``opdplug check``. Not firstresult.
    """


@hookspec
def opd_unconfigure(ctx: "RunContext") -> None:
    """The run is ending (normally or by an exception); release what ``opd_configure`` took.

    :param ctx: the run context.
    :return: nothing.

    Called once per run, after every component's ``close()``. Not firstresult.
    """


# ----------------------------------------------------------------------------- registries
@hookspec
def opd_register_samplers(register: Register) -> None:
    """Register rollout samplers (``[rollout] sampler``): who writes the completions.

    :param register: ``register(name, cls, default=False)``; instances (options from
        ``[rollout.options]``) are called ``sampler(ctx, prompts, step) -> RolloutBatch``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
def opd_register_scorers(register: Register) -> None:
    """Register teachers/scorers (``[teacher] scorer``) that turn a batch into ``TeacherScores``.

    :param register: ``register(name, cls_or_instance, default=False)``; options from
        ``[teacher.options]``; called ``scorer(ctx, batch) -> TeacherScores``.
    :return: nothing.

    Called once when the registry is built. Not firstresult.
    """


@hookspec
@registry_kind("credit scheme")
def opd_register_credit_schemes(register: Register) -> None:
    """Register credit-assignment schemes (``[credit] scheme``).

    :param register: ``register(name, cls, default=False)``; ``cls`` is a frozen dataclass of
        the scheme's options (``[credit.options]``) whose instances are called
        ``scheme(batch, scores) -> Credit``.
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

    :param register: ``register(name, factory, default=False)``; ``factory(tokenizer=...,
        options=...) -> Task`` (see ``opdplug.types.Task``). If the factory has an
        ``options_class`` (a dataclass), ``[task.options]`` is validated into it first.
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


# ----------------------------------------------------------------------------- backend
@hookspec(firstresult=True)
def opd_load_models(ctx: "RunContext") -> "Optional[LoadedModels]":
    """Load the student (trainable), its tokenizer and the teacher (frozen, or None) that
    ``[student]`` and ``[teacher]`` describe.

    :param ctx: the run context; config validated, accelerator set, no models yet.
    :return: ``LoadedModels``, or None to defer.

    firstresult. Called once per run, before the task is built.
    """


@hookspec(firstresult=True)
def opd_student_forward(ctx: "RunContext", batch: "RolloutBatch") -> "Optional[StudentOutputs]":
    """The student's forward pass on ``batch``, with gradients.

    :param ctx: the run context.
    :param batch: the micro-batch's rollout.
    :return: ``StudentOutputs`` (shifted final hidden states and the output projection), or
        None to defer.

    firstresult. Called once per micro-batch, after ``opd_credit``, with gradients enabled.
    """


@hookspec(firstresult=True)
def opd_save_model(ctx: "RunContext", directory: "Path") -> "Optional[Path]":
    """Write the trained student to ``directory`` as a model users can load (LoRA merged),
    atomically.

    :param ctx: the run context.
    :param directory: where the model goes (replaced if it exists).
    :return: the directory written, or None to defer.

    firstresult. Called once, on the main process, when a run finishes.
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
    the student's current weights. The kernel's (trylast) calls the sampler named by
    ``[rollout] sampler``. Wrappers see the batch and may return a filtered one.
    """


@hookspec(firstresult=True)
def opd_score(ctx: "RunContext", batch: "RolloutBatch") -> "Optional[TeacherScores]":
    """Get the teacher's log-probs on every token of ``batch``.

    :param ctx: the run context.
    :param batch: the rollout of this micro-batch.
    :return: ``TeacherScores`` aligned with ``batch``, or None to defer.

    firstresult. Called once per micro-batch, right after ``opd_rollout``, under ``no_grad``.
    The kernel's (trylast) calls the scorer named by ``[teacher] scorer``.
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
    kernel's (trylast) calls the scheme named by ``[credit] scheme``.
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
    enabled. The kernel has no implementation: the plugin that owns ``[loss]`` provides one.
    """


@hookspec
def opd_step_end(ctx: "RunContext", step: int, metrics: dict) -> None:
    """An optimizer step finished.

    :param ctx: the run context.
    :param step: the step that finished (0-based).
    :param metrics: the step's logged metrics (plugins may add keys; they are logged after).
    :return: nothing.

    Called once per optimizer step on every process, after the optimizer step and the
    components' ``metrics()``, before logging and checkpointing. Not firstresult.
    """
