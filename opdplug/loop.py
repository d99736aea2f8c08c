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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from . import checkpoint as ckpt
from .config import Config, config_to_toml_dict, dump_toml
from .context import RunContext, derive_seed
from .errors import ConfigError, RemoteError, TrainingError
if TYPE_CHECKING:  # pragma: no cover
    from .manager import Manager
from .prepare import build_task, make_optimizer, setup, teardown, trainable_state  # noqa: F401 (re-exported)


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


# ----------------------------------------------------------------------------- one step
def require_finite(value: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(value).all():
        raise TrainingError(
            f"{what} is not finite at step {step}; lower run.lr, or check the teacher and the loss options "
            f"(no checkpoint was written for this step)"
        )


def student_forward(ctx: RunContext, batch):
    """The student's forward pass, from the backend plugin."""
    out = ctx.manager.hook.opd_student_forward(ctx=ctx, batch=batch)
    if out is None:
        raise TrainingError("no plugin ran the student's forward pass (opd_student_forward returned None)")
    return out


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
    ``p * B`` within it. With ``rollout.samples_per_prompt = G``, ``B * P * grad_accum / G``
    distinct prompts are drawn and global row ``r`` holds prompt ``r // G`` (its group), so a
    group's ``G`` rows are consecutive and, ``B`` being a multiple of ``G``, on one process.
    Each prompt carries its global row index (``Prompt.row``), from which
    the samplers derive per-row seeds: the run is a function of the global batch, not of how it
    is split over processes and micro-batches.
    """
    run = ctx.config.run
    B, P, G = run.batch_size, ctx.num_processes, ctx.config.rollout.samples_per_prompt
    n = B * P * run.grad_accum // G  # distinct prompts; row r holds prompt r // G (group r // G)
    if hasattr(ctx.task, "take"):  # a stream (a dataset): read on from the run's data position
        distinct, ctx.next_data_position = ctx.task.take(ctx.data_position, n, seed=run.seed)
    else:  # a generator of instances: a function of the seed and the step
        distinct = ctx.task.prompts(n, seed=derive_seed(run.seed, "prompts", step), split="train")
    out = []
    for m in range(run.grad_accum):
        start = m * B * P + ctx.process_index * B
        out.append([dataclasses.replace(distinct[r // G], row=r, group=r // G) for r in range(start, start + B)])
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
def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable row is not kept


class MetricsLog:
    """metrics.jsonl, one row per logged step, and optional TensorBoard events.

    A run starting at ``start`` keeps only the rows of earlier steps: a fresh run (or a rerun
    after a failure) starts an empty log, a resumed one drops the rows of steps it will redo,
    so no step is ever logged twice."""

    def __init__(self, output_dir: Path, tensorboard: bool, enabled: bool, start: int = 0):
        self.enabled = enabled
        self.file = None
        if enabled:
            path = output_dir / "metrics.jsonl"
            kept = [line for line in (path.read_text().splitlines() if path.is_file() and start > 0 else [])
                    if _logged_step(line) < start]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
            self.file = open(path, "a")
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
            extra={"data_position": ctx.data_position},
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
    ctx.data_position = ctx.next_data_position = int(state["extra"].get("data_position", 0))
    changed = config_changes(state["config_toml"], ctx.config)
    if changed and ctx.accelerator.is_main_process:
        print(f"opdplug: resuming {ctx.config.run.output_dir} at step {state['step']} with a changed config "
              f"({'; '.join(changed[:4])}{'; ...' if len(changed) > 4 else ''}); "
              f"use another run.output_dir or run.resume = false to start over", file=sys.stderr)
    return int(state["step"])


# Keys that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = {"run.steps", "run.stop_after", "run.progress", "run.log_every", "run.checkpoint_every",
                     "run.keep_checkpoints", "run.tensorboard", "run.threads", "run.step_retries"}


def config_changes(saved_toml: str, config: Config) -> list[str]:
    """``key old -> new`` for each setting that differs from the checkpoint's config."""
    import tomllib

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    try:
        old = flat(tomllib.loads(saved_toml))
    except tomllib.TOMLDecodeError:
        return ["the checkpoint's config.toml is unreadable"]
    new = flat(config_to_toml_dict(config))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]


def train(config: Config, manager: "Manager", *, progress_desc: str = "train") -> TrainResult:
    """Run (or resume) the training described by ``config``."""
    ctx = setup(config, manager)
    try:
        return _train(ctx, progress_desc)
    finally:
        teardown(ctx)


def _train(ctx: RunContext, progress_desc: str) -> TrainResult:
    run, acc = ctx.config.run, ctx.accelerator
    torch.manual_seed(derive_seed(run.seed, "init"))
    optimizer, scheduler = make_optimizer(ctx)
    ctx.student, optimizer = acc.prepare(ctx.student, optimizer)
    start = resume(ctx, optimizer, scheduler)
    if start > run.steps:  # the weights are past what was asked: say so, write nothing
        raise ConfigError(f"{run.output_dir} holds a checkpoint at step {start}, past run.steps = {run.steps}: raise "
                          f"run.steps, use another run.output_dir, or set run.resume = false to start over")
    if start == 0:
        ctx.manager.hook.opd_preflight(ctx=ctx)

    out_dir = Path(run.output_dir)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.toml").write_text(dump_toml(config_to_toml_dict(ctx.config)))
        (out_dir / "plugins.json").write_text(json.dumps(ctx.manager.versions(), indent=1))
    log = MetricsLog(out_dir, run.tensorboard, enabled=acc.is_main_process, start=start)
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
            ctx.data_position = ctx.next_data_position
            metrics.update(ctx.component_metrics())
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
                acc.wait_for_everyone()  # as at the end: no process leaves while another still writes
                return TrainResult(out_dir, None, done, history)
        save(ctx, optimizer, scheduler, run.steps)
        final = None
        if acc.is_main_process:
            final = ctx.manager.hook.opd_save_model(ctx=ctx, directory=out_dir / "final")
        acc.wait_for_everyone()
        return TrainResult(out_dir, final, run.steps, history)
    finally:
        if bar is not None:
            bar.close()
        log.close()
