"""Training an EAGLE-3 head against a local target, with training-time-test (TTT) unrolling.

Every step: prompts from the task, completions sampled by the TARGET itself (what it will be
asked to verify at serving time), one no-grad target forward with ``output_hidden_states`` for
the features at ``aux_layers`` and the target's distributions, then the head's TTT unroll and
loss. Nothing but the head's checkpoint and the metrics is written: features are streamed.

The target's batches and the TTT loss with its acceptance proxies are in ``ttt.py``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from opdplug_local import models as local
from opdplug.errors import ConfigError, TrainingError

from .checkpoint import HEAD_SUBDIR, save_head
from .config import check_aux_layers, default_aux_layers, draft_config, sglang_layer_ids
from .model import Eagle3Head
from .ttt import generate, target_batch, ttt_loss
from .vocab import build_vocab, count_tokens, full_vocab

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"


@dataclass(frozen=True)
class Eagle3Options:
    """How ``train_eagle3`` trains a head."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 16
    """Prompts per step (each gets one target-generated completion)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (constant after a linear warm-up)."""
    warmup_steps: int = 10
    """Steps of linear warm-up from 0 to ``lr``."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    ttt_steps: int = 7
    """Training-time-test unroll depth: draft steps trained per position (EAGLE-3 uses 7)."""
    step_decay: float = 0.8
    """Weight of TTT step j's loss is ``step_decay ** j``."""
    draft_vocab_size: Optional[int] = None
    """Draft vocabulary size; None = the target's whole vocabulary."""
    aux_layers: Optional[tuple[int, ...]] = None
    """Target HF hidden-state indices fused by the head (i = the stream entering layer i; SGLang
    config id i - 1); None = ``model.default_aux_layers`` of the target's depth."""
    intermediate_size: Optional[int] = None
    """MLP width of the head; None = the target's."""
    max_new_tokens: int = 64
    """Generation budget of the target's completions (rows also stop at EOS)."""
    temperature: float = 1.0
    """Temperature the target samples its completions at (0 = greedy). Sample at the serving
    temperature: the head learns the target's distribution either way, but the data (and
    ``accept_len``'s exactness) follow this."""
    vocab_prompts: int = 256
    """Prompts whose target completions are counted to choose the draft vocabulary (only when
    ``draft_vocab_size`` is smaller than the target's)."""
    eval_prompts: int = 64
    """Held-out (eval split) prompts whose target completions measure the acceptance proxies."""
    eval_every: int = 25
    """Evaluate every this many steps (and before the first and after the last)."""
    log_every: int = 10
    """Write the training batch's metrics every this many steps."""
    seed: int = 0
    """Seeds prompts, completions and the head's initialisation."""
    init_from_target: bool = True
    """Warm-start ``lm_head`` (draft rows) and ``norm`` from the target's lm-head and final norm."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.ttt_steps < 1:
            raise ConfigError(
                f"eagle3 needs steps >= 0, batch_size >= 1 and ttt_steps >= 1; got steps={self.steps}, "
                f"batch_size={self.batch_size}, ttt_steps={self.ttt_steps}"
            )
        if not self.lr > 0 or self.temperature < 0 or not 0 < self.step_decay <= 1:
            raise ConfigError(
                f"eagle3 needs lr > 0, temperature >= 0 and 0 < step_decay <= 1; got lr={self.lr}, "
                f"temperature={self.temperature}, step_decay={self.step_decay}"
            )
        if self.max_new_tokens < 1 or self.eval_every < 1 or self.log_every < 1:
            raise ConfigError("eagle3 needs max_new_tokens, eval_every and log_every >= 1")


@dataclass(frozen=True)
class Eagle3Result:
    """What ``train_eagle3`` returns."""

    output_dir: Path
    """The run directory."""
    head_dir: Path
    """The trained head (``config.json`` + ``model.safetensors``, no embedding table): give it to
    ``Eagle3Drafter.from_pretrained`` or ``export_drafter('eagle3', ...)``."""
    metrics_path: Path
    """``metrics.jsonl``: one JSON row per log/eval (see ``read_metrics``)."""
    steps_done: int
    """Optimizer steps run."""
    aux_layers: tuple[int, ...]
    """HF hidden-state indices the head reads (SGLang ids are these minus one)."""
    draft_vocab_size: int
    """Size of the head's output vocabulary."""
    final_eval: dict
    """The last eval row: ``top1`` per TTT step, ``accept_len``, ``ce`` per step, ``loss``."""
    history: list = field(default_factory=list)
    """Every metrics row written, in order."""
    seconds: float = 0.0
    """Wall-clock time of the whole call."""


# ----------------------------------------------------------------------------- training
def choose_vocab(target, task, tokenizer, options: Eagle3Options) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d2t, t2d)``: the whole vocabulary, or the most frequent ids of the target's completions."""
    V = int(target.config.vocab_size)
    size = options.draft_vocab_size or V
    if not 1 <= size <= V:
        raise ConfigError(f"draft_vocab_size = {size} must be in 1..{V} (the target's vocabulary)")
    if size == V:
        return full_vocab(V)
    prompts = task.prompts(options.vocab_prompts, seed=options.seed * 1_000_003 + 999_983, split="train")
    completions = []
    for start in range(0, len(prompts), 64):
        sample = generate(target, prompts[start:start + 64], options, eos_id=tokenizer.eos_token_id,
                          pad_id=tokenizer.pad_token_id, seed=options.seed * 7919 + start)
        completions += sample.completions()
    return build_vocab(count_tokens(completions, V), size, always=[tokenizer.eos_token_id])


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def train_eagle3(
    target_dir: Union[str, os.PathLike],
    tokenizer=None,
    options: Eagle3Options = Eagle3Options(),
    output_dir: Union[str, os.PathLike] = "eagle3",
    *,
    task=None,
) -> Eagle3Result:
    """Train an EAGLE-3 head for the target in ``target_dir``; write it under ``output_dir``.

    :param target_dir: a local Hugging Face Llama causal LM directory (the serving target).
    :param tokenizer: the target's tokenizer; None loads it from ``target_dir``.
    :param options: ``Eagle3Options``.
    :param output_dir: run directory: ``head/`` (written atomically at the end), ``metrics.jsonl``
        (streamed), ``train_summary.json``.
    :param task: prompt source (an ``opdplug_local.tasks.Task``); None = the built-in SumChain.
    """
    from tqdm.auto import tqdm

    started = time.time()
    target = local.load_model(str(target_dir), "target_dir").eval().requires_grad_(False)
    tokenizer = tokenizer if tokenizer is not None else local.load_tokenizer(str(target_dir))
    if task is None:
        from opdplug_local.tasks import SumChain

        task = SumChain(tokenizer)
    num_layers = int(target.config.num_hidden_layers)
    aux = check_aux_layers(options.aux_layers or default_aux_layers(num_layers), num_layers)
    d2t, t2d = choose_vocab(target, task, tokenizer, options)
    config = draft_config(target.config, draft_vocab_size=int(d2t.shape[0]), aux_layers=aux,
                          intermediate_size=options.intermediate_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        head = Eagle3Head(config)
    head.set_vocab(d2t, t2d)
    if options.init_from_target:
        head.init_from_target(target)
    else:
        head.set_embedding(target)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    eval_prompts = task.prompts(options.eval_prompts, seed=options.seed, split="eval") if options.eval_prompts else []
    eval_batch = None
    if eval_prompts:
        eval_batch = target_batch(
            target, generate(target, eval_prompts, options, eos_id=eos_id, pad_id=pad_id, seed=options.seed * 31 + 17),
            aux, head.draft_to_target_Vd,
        )

    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    warmup = max(1, options.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / METRICS_FILE
    history: list[dict] = []
    metrics_file = open(metrics_path, "w")

    def record(row: dict) -> None:
        history.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()

    def evaluate(step: int) -> dict:
        head.eval()
        with torch.no_grad():
            _, m = ttt_loss(head, eval_batch, options.ttt_steps, options.step_decay)
        head.train()
        row = {"step": step, "split": "eval", **m}
        record(row)
        return row

    final_eval: dict = {}
    try:
        if eval_batch is not None:
            final_eval = evaluate(0)
        head.train()
        bar = tqdm(range(options.steps), desc="eagle3", disable=not options.progress, dynamic_ncols=True)
        for step in bar:
            prompts = task.prompts(options.batch_size, seed=options.seed * 1_000_003 + step, split="train")
            sample = generate(target, prompts, options, eos_id=eos_id, pad_id=pad_id,
                              seed=options.seed * 1_000_003 + 500_009 + step)
            batch = target_batch(target, sample, aux, head.draft_to_target_Vd)
            loss, m = ttt_loss(head, batch, options.ttt_steps, options.step_decay)
            if not math.isfinite(m["loss"]):
                raise TrainingError(f"eagle3 loss is {m['loss']} at step {step + 1}; lower lr (now {options.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
            optimizer.step()
            scheduler.step()
            done = step + 1
            if done % options.log_every == 0 or done == options.steps:
                record({"step": done, "split": "train", "lr": scheduler.get_last_lr()[0], **m})
            if eval_batch is not None and (done % options.eval_every == 0 or done == options.steps):
                final_eval = evaluate(done)
            bar.set_postfix(loss=f"{m['loss']:.3f}", top1=f"{m['top1'][0]:.2f}", acc_len=f"{m['accept_len']:.2f}")
    finally:
        metrics_file.close()

    head.eval()
    head_dir = save_head(head, output_dir / HEAD_SUBDIR)
    seconds = time.time() - started
    _write_json_atomically(output_dir / SUMMARY_FILE, {
        "kind": "eagle3",
        "target_dir": str(Path(target_dir).resolve()),
        "options": asdict(options),
        "aux_layers": list(aux),
        "sglang_eagle_aux_hidden_state_layer_ids": sglang_layer_ids(aux),
        "draft_vocab_size": int(d2t.shape[0]),
        "steps_done": options.steps,
        "final_eval": final_eval,
        "seconds": seconds,
    })
    return Eagle3Result(
        output_dir=output_dir, head_dir=head_dir, metrics_path=metrics_path, steps_done=options.steps,
        aux_layers=aux, draft_vocab_size=int(d2t.shape[0]), final_eval=final_eval, history=history,
        seconds=seconds,
    )


# ----------------------------------------------------------------------------- reporting
def read_metrics(path: Union[str, os.PathLike], split: Optional[str] = None) -> list[dict]:
    """Rows of a ``metrics.jsonl`` (or of the one in a run directory), optionally of one ``split``
    (``"train"`` or ``"eval"``). Each row: ``step``, ``split``, ``loss``, ``ce`` and ``top1`` (lists
    indexed by TTT step), ``accept_len``, ``draft_mass``, ``tokens`` (train rows also ``lr``)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def plot_metrics(metrics: Union[str, os.PathLike], png_path: Union[str, os.PathLike], *, split: str = "eval") -> Path:
    """Draw top-1 agreement per TTT step and the greedy acceptance length against training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics, split)
    if not rows:
        raise ConfigError(f"{str(metrics)!r} has no {split!r} rows to plot")
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for j in range(len(rows[0]["top1"])):
        ax1.plot(steps, [r["top1"][j] for r in rows], marker=".", label=f"TTT step {j}")
    ax1.set(xlabel="training step", ylabel="top-1 agreement with the target", ylim=(0, 1.02),
            title=f"EAGLE-3 head ({split})")
    ax1.legend(fontsize=7)
    k = len(rows[0]["top1"])
    ax2.plot(steps, [r["accept_len"] for r in rows], marker="o")
    ax2.set(xlabel="training step", ylabel=f"greedy acceptance length (k={k}, bonus incl.)", ylim=(1, k + 1.05),
            title="tokens per target forward")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path
