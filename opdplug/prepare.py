"""Setting a run up and taking it down: resolve every component the config names, load the
models through the backend hooks, build the task, give components their lifecycle; and the
optimizer every run uses."""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import Config, from_dict
from .context import RunContext
from .errors import ConfigError
if TYPE_CHECKING:  # pragma: no cover
    from .manager import Manager


def setup(config: Config, manager: "Manager") -> RunContext:
    """Build the context: validate every component name, load models, check tokenizers.

    Nothing is written to disk here, so a bad config leaves no trace.
    """
    from accelerate import Accelerator

    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    ctx = validate(config, manager)
    ctx.accelerator = Accelerator(cpu=config.run.device == "cpu")
    models = manager.hook.opd_load_models(ctx=ctx)
    if models is None:
        raise ConfigError(
            "no loaded plugin loads models (hook opd_load_models): install and enable a backend plugin, "
            "e.g. the local one (pip install opdplug-local; OPDPLUG_PLUGINS must include 'local')"
        )
    ctx.tokenizer, ctx.student, ctx.teacher = models.tokenizer, models.student, models.teacher
    ctx.task = build_task(ctx.registry, ctx.config.task.name, ctx.config.task.options, ctx.tokenizer)
    try:
        ctx.setup_components()
        manager.hook.opd_configure(ctx=ctx)
    except BaseException:  # what was set up before the failure is closed again
        teardown(ctx)
        raise
    return ctx


def validate(config: Config, manager: "Manager") -> RunContext:
    """A context for ``config`` whose every component name (the kernel's and every plugin's,
    through ``opd_validate``) is resolved; nothing loaded, nothing written."""
    ctx = RunContext(config=resolve_defaults(config, manager), manager=manager)
    validate_components(ctx)
    manager.hook.opd_validate(ctx=ctx)
    return ctx


def teardown(ctx: RunContext) -> None:
    """Close every component that has a ``close()``, then ``opd_unconfigure``."""
    try:
        ctx.close_components()
    finally:
        ctx.manager.hook.opd_unconfigure(ctx=ctx)


def resolve_defaults(config: Config, manager: "Manager") -> Config:
    """``config`` with every empty component name of the kernel's tables replaced by the name
    of the kind's default, so the run directory records what actually ran."""
    registry = manager.registry
    return config.replace(
        rollout={"sampler": registry.resolve("samplers", config.rollout.sampler, "rollout.sampler")},
        teacher={"scorer": registry.resolve("scorers", config.teacher.scorer, "teacher.scorer")},
        credit={"scheme": registry.resolve("credit_schemes", config.credit.scheme, "credit.scheme")},
        task={"name": registry.resolve("tasks", config.task.name, "task.name")},
    )


def build_task(registry, name: str, options: dict, tokenizer) -> Any:
    """The task ``name`` speaking ``tokenizer``'s ids, its options validated against the task's
    ``options_class`` (a dataclass) when it declares one."""
    factory = registry.get("tasks", name, "task.name")
    options_class = getattr(factory, "options_class", None)
    if options_class is not None:
        options = from_dict(options_class, options or {}, "[task.options]")
    elif options:
        raise ConfigError(f"task {name!r} takes no options, got {sorted(options)}")
    kwargs = {"registry": registry} if "registry" in _parameters(factory) else {}
    try:
        return factory(tokenizer=tokenizer, options=options or None, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"task {name or registry.resolve('tasks', name)!r}: {exc}") from None


def _parameters(factory) -> set:
    """Names a task factory accepts (a factory that asks for ``registry`` gets it: e.g. to
    build the verifier its options name)."""
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def validate_components(ctx: RunContext) -> None:
    """Resolve every component name of the kernel's tables now, so typos fail before anything
    runs (plugins resolve their own tables' in ``opd_validate``)."""
    c = ctx.config
    ctx.component("samplers", c.rollout.sampler, c.rollout.options, "rollout.sampler")
    ctx.component("scorers", c.teacher.scorer, c.teacher.options, "teacher.scorer")
    ctx.component("credit_schemes", c.credit.scheme, c.credit.options, "credit.scheme")
    if c.credit.verifier:
        ctx.component("verifiers", c.credit.verifier, c.credit.verifier_options, "credit.verifier")
    ctx.registry.get("tasks", c.task.name, "task.name")
    check_numbers(c)
    out = Path(c.run.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.output_dir = {c.run.output_dir!r} is a file, not a directory; choose another path")


def check_numbers(c: Config) -> None:
    """Values no run can use, as one line naming the key (before anything loads)."""
    run, rollout = c.run, c.rollout
    rules = [
        ("run.steps", run.steps, run.steps >= 1, "at least 1"),
        ("run.batch_size", run.batch_size, run.batch_size >= 1, "at least 1"),
        ("run.grad_accum", run.grad_accum, run.grad_accum >= 1, "at least 1"),
        ("run.lr", run.lr, run.lr > 0, "greater than 0"),
        ("run.weight_decay", run.weight_decay, run.weight_decay >= 0, "0 or more"),
        ("run.min_lr_ratio", run.min_lr_ratio, 0 <= run.min_lr_ratio <= 1, "between 0 and 1"),
        ("run.warmup_steps", run.warmup_steps, run.warmup_steps >= 0, "0 or more"),
        ("run.max_grad_norm", run.max_grad_norm, run.max_grad_norm >= 0, "0 (off) or more"),
        ("run.checkpoint_every", run.checkpoint_every, run.checkpoint_every >= 0, "0 (only at the end) or more"),
        ("run.keep_checkpoints", run.keep_checkpoints, run.keep_checkpoints >= 1, "at least 1"),
        ("run.log_every", run.log_every, run.log_every >= 1, "at least 1"),
        ("run.stop_after", run.stop_after, run.stop_after >= 0, "0 (never) or more"),
        ("rollout.top_p", rollout.top_p, 0 < rollout.top_p <= 1, "in (0, 1]"),
        ("rollout.max_new_tokens", rollout.max_new_tokens, rollout.max_new_tokens >= 0, "0 (the task's budget) or more"),
        ("rollout.samples_per_prompt", rollout.samples_per_prompt, rollout.samples_per_prompt >= 1, "at least 1"),
    ]
    for key, value, ok, want in rules:
        if not ok:
            raise ConfigError(f"{key} must be {want}, got {value}")
    if run.batch_size % rollout.samples_per_prompt:
        raise ConfigError(
            f"run.batch_size ({run.batch_size}) must be a multiple of rollout.samples_per_prompt "
            f"({rollout.samples_per_prompt}): a group of samples never straddles a micro-batch or a process"
        )
    if not rollout.temperature > 0:
        raise ConfigError(
            f"rollout.temperature must be greater than 0, got {rollout.temperature}: the loss compares the "
            f"distributions at the sampling temperature (greedy decoding is for evaluation: opdplug eval --temperature 0)"
        )


def make_optimizer(ctx: RunContext):
    run = ctx.config.run
    params = [p for p in ctx.student.parameters() if p.requires_grad]
    if len(run.adam_betas) != 2:
        raise ConfigError(f"run.adam_betas must hold two numbers, got {run.adam_betas}")
    # The fused kernel updates each tensor in one pass: on small models the for-loop version's
    # dozen operations per tensor cost more than the arithmetic (4.5 ms -> 0.9 ms per step for
    # the demo's student on the CPU). It takes CPU and CUDA floating-point tensors only.
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=run.lr, weight_decay=run.weight_decay, betas=tuple(run.adam_betas),
                                  fused=fused or None)
    floor = run.min_lr_ratio

    def factor(step: int) -> float:
        if step < run.warmup_steps:
            return (step + 1) / run.warmup_steps
        progress = (step - run.warmup_steps) / max(1, run.steps - run.warmup_steps)
        if run.lr_schedule == "linear":
            return floor + (1 - floor) * max(0.0, 1.0 - progress)
        if run.lr_schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold: trainable parameters (the adapter under LoRA)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
