"""The training loop, top to bottom: rollout -> score -> credit -> loss -> step.

Runs unchanged on one CPU, one GPU, or many processes under ``accelerate launch``. Every
optimizer step first produces all its micro-batches with the current weights (so every rollout
is on-policy for the update it feeds), then counts the loss tokens of the whole step across all
processes, and only then backpropagates each micro-batch's token-summed loss divided by that
global count: the result does not depend on how the batch is split.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from . import checkpoint as ckpt
from . import local, sampling
from .builtin import require_finite
from .config import Config, config_to_toml_dict, dump_toml
from .context import RunContext, derive_seed
from .errors import ConfigError, PreflightError, RemoteError, TrainingError
from .manager import Manager, make_plugin_manager
from .types import StudentOutputs


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns."""

    output_dir: Path
    """The run directory."""
    final_model_dir: Optional[Path]
    """The exported student (a Hugging Face directory), or None if the run stopped early."""
    steps_done: int
    """Optimizer steps completed in total (including those before a resume)."""
    history: list
    """The metric dict of every step this invocation ran."""


# ----------------------------------------------------------------------------- set-up
def setup(config: Config, manager: Manager) -> RunContext:
    """Build the context: validate every component name, load models, check tokenizers.

    Nothing is written to disk here, so a bad config leaves no trace.
    """
    from accelerate import Accelerator

    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    ctx = RunContext(config=config, manager=manager)
    validate_components(ctx)
    ctx.accelerator = Accelerator(cpu=config.run.device == "cpu")
    task_factory = ctx.registry.get("tasks", config.task.name, "task.name")
    student, tokenizer = local.load_student(config, task_factory)
    ctx.tokenizer = tokenizer
    ctx.task = build_task(ctx.registry, config.task.name, config.task.options, tokenizer)
    if config.teacher.path:
        teacher = local.load_model(config.teacher.path, "teacher.path")
        local.check_tokenizers(tokenizer, local.load_tokenizer(config.teacher.path))
        teacher.requires_grad_(False).eval()
        ctx.teacher = teacher.to(ctx.accelerator.device)
    ctx.student = student
    manager.hook.opd_configure(ctx=ctx)
    return ctx


def build_task(registry, name: str, options: dict, tokenizer) -> Any:
    """The task ``name`` speaking ``tokenizer``'s ids, its options validated against the task's
    ``options_class`` (a dataclass) when it declares one."""
    from .config import from_dict

    factory = registry.get("tasks", name, "task.name")
    options_class = getattr(factory, "options_class", None)
    if options_class is not None:
        options = from_dict(options_class, options or {}, "[task.options]")
    elif options:
        raise ConfigError(f"task {name!r} takes no options, got {sorted(options)}")
    try:
        return factory(tokenizer=tokenizer, options=options or None)
    except ValueError as exc:
        raise ConfigError(f"task {name!r}: {exc}") from None


def validate_components(ctx: RunContext) -> None:
    """Resolve every component name in the config now, so typos fail before anything runs."""
    c = ctx.config
    ctx.component("samplers", c.rollout.sampler, c.rollout.options, "rollout.sampler")
    ctx.component("scorers", c.teacher.scorer, c.teacher.options, "teacher.scorer")
    ctx.component("credit_schemes", c.credit.scheme, c.credit.options, "credit.scheme")
    if c.credit.verifier:
        ctx.component("verifiers", c.credit.verifier, {}, "credit.verifier")
    support = ctx.component("supports", c.loss.support, {}, "loss.support")
    if getattr(support, "uses_estimator", False):
        ctx.component("estimators", c.loss.estimator, {}, "loss.estimator")
    else:
        ctx.component("divergences", c.loss.divergence, c.loss.divergence_options, "loss.divergence")
    ctx.component("updates", c.loss.update, c.loss.update_options, "loss.update")
    ctx.registry.get("tasks", c.task.name, "task.name")
    for key, value in (("run.steps", c.run.steps), ("run.batch_size", c.run.batch_size), ("run.grad_accum", c.run.grad_accum)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")


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


# ----------------------------------------------------------------------------- one step
def student_forward(ctx: RunContext, batch) -> StudentOutputs:
    """The student's shifted final hidden states (no [B, L, V] logits) and its lm_head."""
    device = ctx.device
    hidden = sampling.final_hidden(ctx.student, batch.input_ids_B_L.to(device), batch.attention_mask_B_L.to(device))
    return StudentOutputs(
        hidden_B_L_H=hidden,
        lm_head_V_H=sampling.lm_head_weight(ctx.student),
        temperature=ctx.config.rollout.temperature,
    )


def rollout_stats(batches, acc=None) -> dict[str, float]:
    """Per-row rollout averages over the global batch (summed over processes when ``acc`` is
    given, so one process and many report the same numbers)."""
    rewards = [b.rewards_B for b in batches if b.rewards_B is not None]
    sums = torch.tensor([
        float(sum(b.batch_size for b in batches)),
        float(sum(b.num_loss_tokens for b in batches)),
        sum(float(b.truncated_B.float().sum()) for b in batches if b.truncated_B is not None),
        float(sum(int(b.attention_mask_B_L.sum()) for b in batches)),
        sum(float(b.on_policy_B.float().sum()) for b in batches if b.on_policy_B is not None),
        float(sum(r.numel() for r in rewards)),
        sum(float(r.float().sum()) for r in rewards),
    ], dtype=torch.float64)
    if acc is not None and acc.num_processes > 1:
        sums = acc.reduce(sums.to(acc.device), "sum").cpu()
    rows, tokens, truncated, seq_tokens, on_policy, reward_rows, reward_sum = sums.tolist()
    out = {
        "rollout/completion_tokens": tokens / max(rows, 1),
        "rollout/truncated": truncated / max(rows, 1),
        "rollout/sequence_tokens_total": seq_tokens,
        "rollout/on_policy": on_policy / max(rows, 1),
    }
    if reward_rows:
        out["rollout/reward"] = reward_sum / reward_rows
    return out


def step_prompts(ctx: RunContext, step: int) -> list[list]:
    """This process's prompts for each micro-batch of ``step``.

    The step's whole global batch (``batch_size * processes`` rows per micro-batch) is drawn at
    once from a seed that does not involve the process; micro-batch ``m`` holds global rows
    ``[m * B * P, (m + 1) * B * P)`` and process ``p`` takes the ``B`` contiguous rows at
    ``p * B`` within it. Each prompt carries its global row index (``Prompt.row``), from which
    the samplers derive per-row seeds: the run is a function of the global batch, not of how it
    is split over processes and micro-batches.
    """
    run = ctx.config.run
    B, P = run.batch_size, ctx.num_processes
    everything = ctx.task.prompts(B * P * run.grad_accum, seed=derive_seed(run.seed, "prompts", step), split="train")
    out = []
    for m in range(run.grad_accum):
        start = m * B * P + ctx.process_index * B
        out.append([dataclasses.replace(everything[r], row=r) for r in range(start, start + B)])
    return out


def train_step(ctx: RunContext, optimizer, scheduler, step: int) -> dict[str, float]:
    """One optimizer step. Returns the step's metrics (token averages over the global batch)."""
    run, hook, acc = ctx.config.run, ctx.manager.hook, ctx.accelerator
    t0 = time.perf_counter()
    micro = []
    for prompts in step_prompts(ctx, step):
        batch = hook.opd_rollout(ctx=ctx, prompts=prompts, step=step)
        if batch is None:
            raise TrainingError("no plugin produced a rollout (opd_rollout returned None)")
        with torch.no_grad():
            scores = hook.opd_score(ctx=ctx, batch=batch)
            credit = hook.opd_credit(ctx=ctx, batch=batch, scores=scores)
        micro.append((batch, scores, credit))
    t_rollout = time.perf_counter()

    local_tokens = sum(b.num_loss_tokens for b, _, _ in micro)
    global_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), "sum").item())
    sums: dict[str, float] = {}
    loss_total = 0.0
    for i, (batch, scores, credit) in enumerate(micro):
        last = i == len(micro) - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(ctx.student)
        # DDP skips the all-reduce under no_sync; DeepSpeed instead steps inside backward unless
        # told this is not the step's last micro-batch.
        acc.sync_gradients = last
        with sync:
            out = hook.opd_loss(ctx=ctx, batch=batch, scores=scores, credit=credit, student=student_forward(ctx, batch))
            if out is None:
                raise TrainingError("no plugin computed a loss (opd_loss returned None)")
            # DDP averages gradients over processes; scaling by their number makes the update
            # the sum over all tokens divided by the global token count.
            loss = out.loss_sum * acc.num_processes / max(global_tokens, 1)
            require_finite(loss.detach(), "the loss", step)
            acc.backward(loss)
        loss_total += float(out.loss_sum.detach())
        for k, v in {**{f"credit/{k}": v for k, v in credit.metrics.items()}, **out.metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v)

    acc.sync_gradients = True
    grad_norm = 0.0
    if run.max_grad_norm > 0:
        norm = acc.clip_grad_norm_([p for p in ctx.student.parameters() if p.requires_grad], run.max_grad_norm)
        if norm is None:  # DeepSpeed clips in its own step (its gradient_clipping) and reports no norm here
            norm = getattr(ctx.student, "get_global_grad_norm", lambda: None)()
        grad_norm = float(norm) if norm is not None else 0.0
        if not math.isfinite(grad_norm):
            raise TrainingError(f"the gradient norm is not finite at step {step}; lower run.lr (no checkpoint was written for this step)")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)

    # Token-summed metrics become global per-token averages.
    keys = sorted(sums)
    totals = acc.reduce(torch.tensor([loss_total] + [sums[k] for k in keys], dtype=torch.float64, device=acc.device), "sum")
    metrics = {"step": step, "loss": float(totals[0]) / max(global_tokens, 1)}
    for k, v in zip(keys, totals[1:].tolist()):
        metrics[k] = v if k.endswith("_mean") else v / max(global_tokens, 1)
    metrics.update(rollout_stats([b for b, _, _ in micro], acc))
    now = time.perf_counter()
    metrics.update({
        "tokens": global_tokens, "processes": acc.num_processes, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
        "time/rollout_s": t_rollout - t0, "time/step_s": now - t0,
    })
    return metrics


def remote_safe_step(ctx: RunContext, optimizer, scheduler, step: int) -> dict[str, float]:
    """``train_step``, redone whole when a server fails it, and checkpointed when it keeps failing.

    Every rollout and score of a step is gathered before the first backward pass, so a
    ``RemoteError`` leaves weights, optimizer and scheduler exactly as they were after ``step``
    steps: the step can be redone from scratch (never trained on part of its scores), and a
    checkpoint written now resumes exactly where the uninterrupted run would be.
    """
    for attempt in range(ctx.config.run.step_retries + 1):
        try:
            return train_step(ctx, optimizer, scheduler, step)
        except RemoteError as exc:
            optimizer.zero_grad(set_to_none=True)
            if attempt < ctx.config.run.step_retries:
                print(f"opdplug: step {step} failed ({exc}); redoing it whole "
                      f"(retry {attempt + 1} of {ctx.config.run.step_retries})", file=sys.stderr)
                continue
            save(ctx, optimizer, scheduler, step)
            raise RemoteError(
                f"{exc} (checkpoint written at step {step}; rerun the same command to resume)", url=exc.url
            ) from None
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- the run
class MetricsLog:
    """metrics.jsonl (appended across resumes) and optional TensorBoard events."""

    def __init__(self, output_dir: Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.file = open(output_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("run.tensorboard = true needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, metrics["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def save(ctx: RunContext, optimizer, scheduler, steps_done: int) -> None:
    acc = ctx.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        ckpt.save_checkpoint(
            ctx.config.run.output_dir, steps_done,
            model_state=trainable_state(ctx.student_module()),
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
            config_toml=dump_toml(config_to_toml_dict(ctx.config)),
            versions=ctx.manager.versions(),
            keep=ctx.config.run.keep_checkpoints,
        )
    acc.wait_for_everyone()


def resume(ctx: RunContext, optimizer, scheduler) -> int:
    """Load the latest checkpoint of the run directory if any; return the step to start at."""
    if not ctx.config.run.resume:
        return 0
    path = ckpt.latest_checkpoint(ctx.config.run.output_dir)
    if path is None:
        return 0
    state = ckpt.load_checkpoint(path)
    model = ctx.student_module()
    expected = trainable_state(model)
    if set(state["model"]) != set(expected):
        raise ConfigError(f"checkpoint {path} does not match the student (different trainable tensors); use another run.output_dir or set run.resume = false")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state["model"]:
                p.copy_(state["model"][name].to(p.device, p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng_tensors"], state["rng"])
    return int(state["step"])


def export_model(ctx: RunContext, directory: Path) -> Path:
    """The trained student as a plain Hugging Face directory (LoRA merged), written atomically."""
    model = ctx.student_module()
    if hasattr(model, "merge_and_unload"):  # peft: serve a plain model
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        ctx.tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def needs_preflight(ctx: RunContext) -> bool:
    """Self-scoring must give ~0 for every divergence-based loss; supervised NLL on teacher or
    reference samples is a cross-entropy, not a divergence, and is exempt."""
    support = ctx.component("supports", ctx.config.loss.support, {}, "loss.support")
    if getattr(support, "uses_estimator", False):
        est = ctx.component("estimators", ctx.config.loss.estimator, {}, "loss.estimator")
        return getattr(est, "sampler", "student") == "student"
    return True


def preflight(ctx: RunContext) -> float:
    """The student scored against itself must give a loss of about zero.

    Catches a temperature applied on one side only, misaligned shifts, and divergences that
    are not zero at p = q. Returns the per-token self-loss.
    """
    from .builtin import SelfScorer

    hook = ctx.manager.hook
    prompts = ctx.task.prompts(min(4, ctx.config.run.batch_size), seed=derive_seed(ctx.config.run.seed, "preflight"), split="eval")
    from .local import model_rollout
    from .types import PRODUCER_STUDENT

    batch = model_rollout(
        ctx.student_module(), prompts, producer=PRODUCER_STUDENT,
        max_new_tokens=ctx.config.rollout.max_new_tokens or ctx.task.max_new_tokens(max(p.meta.get("length", 1) for p in prompts)),
        temperature=ctx.config.rollout.temperature, top_p=1.0, tokenizer=ctx.tokenizer,
        generator=ctx.generator("preflight"), on_policy=True,
    )
    if ctx.config.credit.verifier:
        # Constant rewards: a centred reward term is zero, so the self-loss must still be ~0.
        batch = batch.replace(rewards_B=torch.zeros(batch.batch_size))
    with torch.no_grad():
        scores = SelfScorer()(ctx, batch)
        credit = hook.opd_credit(ctx=ctx, batch=batch, scores=scores)
        out = hook.opd_loss(ctx=ctx, batch=batch, scores=scores, credit=credit, student=student_forward(ctx, batch))
    per_token = float(out.loss_sum) / max(out.num_tokens, 1)
    if not math.isfinite(per_token) or abs(per_token) > 1e-3:
        raise PreflightError(
            f"self-test failed: the student scored against itself gives a loss of {per_token:.3g} per token "
            f"(expected ~0); the loss '{ctx.config.loss.divergence}'/'{ctx.config.loss.update}' or a plugin's stage hook is wrong"
        )
    return per_token


def train(config: Config, manager: Optional[Manager] = None, *, progress_desc: str = "train") -> TrainResult:
    """Run (or resume) the training described by ``config``."""
    manager = manager or make_plugin_manager()
    ctx = setup(config, manager)
    try:
        return _train(ctx, progress_desc)
    finally:
        manager.hook.opd_unconfigure(ctx=ctx)


def _train(ctx: RunContext, progress_desc: str) -> TrainResult:
    run, acc = ctx.config.run, ctx.accelerator
    torch.manual_seed(derive_seed(run.seed, "init"))
    optimizer, scheduler = make_optimizer(ctx)
    ctx.student, optimizer = acc.prepare(ctx.student, optimizer)
    start = resume(ctx, optimizer, scheduler)
    if start == 0 and needs_preflight(ctx):
        preflight(ctx)

    out_dir = Path(run.output_dir)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.toml").write_text(dump_toml(config_to_toml_dict(ctx.config)))
        (out_dir / "plugins.json").write_text(json.dumps(ctx.manager.versions(), indent=1))
    log = MetricsLog(out_dir, run.tensorboard, enabled=acc.is_main_process)
    history = []
    bar = None
    if run.progress and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.steps, initial=start, desc=progress_desc, dynamic_ncols=True)
    step = start
    try:
        ctx.student.train()
        for step in range(start, run.steps):
            ctx.step = step
            metrics = remote_safe_step(ctx, optimizer, scheduler, step)
            ctx.manager.hook.opd_step_end(ctx=ctx, step=step, metrics=metrics)
            history.append(metrics)
            if step % run.log_every == 0 or step == run.steps - 1:
                log.write(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            done = step + 1
            if run.checkpoint_every and done % run.checkpoint_every == 0 and done < run.steps:
                save(ctx, optimizer, scheduler, done)
            if run.stop_after and done - start >= run.stop_after and done < run.steps:
                return TrainResult(out_dir, None, done, history)
        save(ctx, optimizer, scheduler, run.steps)
        final = None
        if acc.is_main_process:
            final = export_model(ctx, out_dir / "final")
        acc.wait_for_everyone()
        return TrainResult(out_dir, final, run.steps, history)
    finally:
        if bar is not None:
            bar.close()
        log.close()
