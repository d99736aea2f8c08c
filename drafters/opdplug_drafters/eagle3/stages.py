"""The EAGLE-3 head in the core loop: the stages an ``eagle3`` run plugs into ``opdplug.loop``.

The drafters plugin calls these from its stage hooks when ``[drafter] kind`` names a kind whose
``stages`` is this object (``loop_stages``); the loop itself is the one every run uses, so the
head gets ``[run]``'s optimizer and schedule, accelerate, atomic safetensors checkpoints, exact
resume, metrics and progress like any student.

* load models: the target (``[teacher] path``, frozen) and, as the student, a head built for it
  (``Eagle3Student``): draft vocabulary counted on the target's own completions, initialised
  from ``run.seed``, warm-started from the target's lm-head and final norm;
* rollout: the TARGET samples the completions (``[drafter.eagle3] temperature`` and
  ``max_new_tokens``), one seed per global row, so the data does not depend on the processes;
  or, with ``data = "rollout"``, the configured ``[rollout] sampler`` (e.g. the task's answers);
* score: feature capture (``capture.feature_scores``): the target's auxiliary hidden states and
  its next-token distribution over the draft vocabulary; with ``features = "sglang"`` from
  SGLang servers serving the same target (``served.served_feature_scores``, the servers checked
  in ``load_models`` before the target samples anything), for the held-out proxies and the
  pre-flight check too;
* student forward + loss: the TTT unroll and its token-summed loss (``ttt_loss.token_sum``),
  which the loop divides by the step's global count of completion tokens;
* step end: the per-step proxies (``ttt/*``) and, every ``eval_every`` steps, the same on
  held-out target completions (``eval/*``);
* save: the head as ``config.json`` + ``model.safetensors`` (what ``Eagle3Drafter`` and the
  export read), and ``train_summary.json`` beside it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from opdplug.errors import ConfigError, PreflightError
from opdplug.types import PRODUCER_TEACHER, LoadedModels, LossOutput

from .capture import Batch, feature_scores
from .checkpoint import save_head
from .config import check_aux_layers, default_aux_layers, draft_config, head_norms, sglang_layer_ids
from .model import Eagle3Head
from .options import Eagle3Options
from .ttt import generate, target_batch, ttt_loss
from .ttt_loss import token_sum, ttt_terms
from .vocab import build_vocab, count_tokens, full_vocab

SCRATCH = "drafters.eagle3"
"""This kind's per-run state in ``ctx.scratch``."""
SUMMARY_FILE = "train_summary.json"


class Eagle3Student(nn.Module):
    """What the loop trains: the head, whose ``forward`` is the TTT unroll. The unroll has to be
    the module's forward so that a DDP-wrapped student runs it through DDP (which prepares the
    gradient all-reduce in ``forward``)."""

    opd_self_test = False
    """opdplug-token's pre-flight self-test samples from the student: a head drafts from the
    target's features and cannot, and its loss is not the ``[loss]`` table's."""

    def __init__(self, head: Eagle3Head):
        super().__init__()
        self.head = head

    def forward(self, input_ids_B_L=None, features_B_L_A=None, attention_mask_B_L=None, ttt_steps: int = 0,
                **causal_lm_kwargs) -> list[torch.Tensor]:
        if causal_lm_kwargs or features_B_L_A is None:  # called as a causal LM: by a sampler
            raise ConfigError("an EAGLE-3 head cannot sample: with drafter.eagle3.data = 'rollout', choose a [rollout] "
                              "sampler that does not sample the student (reference, teacher)")
        return self.head.ttt_forward(input_ids_B_L, features_B_L_A, attention_mask_B_L, ttt_steps)


@dataclass(frozen=True)
class HeadForward:
    """The student forward of an EAGLE-3 run, bound but not yet run. ``opd_student_forward``
    sees only the rollout, and the head reads the target features the score stage captured: the
    loss calls this with them (inside the same gradient-sync context the loop opened)."""

    student: nn.Module
    """The student as the loop prepared it (possibly DDP-wrapped)."""
    ttt_steps: int

    def __call__(self, captured: Batch) -> list[torch.Tensor]:
        """``ttt_steps`` tensors ``[B, L-1, Vd]``: the head's draft logits per TTT step."""
        return self.student(captured.input_ids_B_L, captured.features_B_L_A, captured.attention_mask_B_L, self.ttt_steps)


@dataclass
class RunState:
    """What an EAGLE-3 run keeps between its stages (``ctx.scratch[SCRATCH]``)."""

    options: Eagle3Options
    eval_batch: Optional[Batch] = None
    source: Optional[Any] = None
    """With ``features = "sglang"``: the checked ``SGLangFeatureSource`` (``served.served_source``)."""


def choose_vocab(target, task, tokenizer, options: Eagle3Options, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d2t, t2d)``: the whole vocabulary, or the most frequent ids of the training data: the
    target's completions, or with ``data = "rollout"`` the task's own answers when it has them
    (as SpecForge counts its vocabulary on the training set)."""
    from opdplug_local.tokenization import pad_id_of, stop_token_ids

    V = int(target.config.vocab_size)
    size = options.draft_vocab_size or V
    if not 1 <= size <= V:
        raise ConfigError(f"drafter.eagle3.draft_vocab_size = {size} must be in 1..{V} (the target's vocabulary)")
    if size == V:
        return full_vocab(V)
    stops = stop_token_ids(tokenizer, target)
    prompts = task.prompts(options.vocab_prompts, seed=seed * 1_000_003 + 999_983, split="train")
    if options.data == "rollout" and all(p.reference_ids for p in prompts):
        return build_vocab(count_tokens([p.reference_ids for p in prompts], V), size, always=stops[:1])
    completions = []
    for start in range(0, len(prompts), 64):
        sample = generate(target, prompts[start:start + 64], options, eos_id=stops, pad_id=pad_id_of(tokenizer),
                          seed=seed * 7919 + start)
        completions += sample.completions()
    return build_vocab(count_tokens(completions, V), size, always=stops[:1])


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class Eagle3Stages:
    """The ``stages`` of the ``eagle3`` drafter kind (see the module docstring). Stateless: a
    run's state lives in ``ctx.scratch[SCRATCH]``."""

    def __init__(self, options_of):
        self._options_of = options_of  # ctx -> Eagle3Options (the kind's validated table)

    def state(self, ctx) -> RunState:
        if SCRATCH not in ctx.scratch:
            ctx.scratch[SCRATCH] = RunState(self._options_of(ctx))
        return ctx.scratch[SCRATCH]

    @staticmethod
    def head(ctx) -> Eagle3Head:
        return ctx.student_module().head

    # -- lifecycle ----------------------------------------------------------------------------
    def validate(self, ctx) -> None:
        config = ctx.config
        if not config.teacher.path:
            raise ConfigError("an eagle3 run needs [teacher] path: the target the head drafts for")
        if config.student.path or config.student.tiny:
            raise ConfigError("an eagle3 run builds its head from the target ([teacher] path); remove [student] path/tiny")
        self.state(ctx)

    def load_models(self, ctx) -> LoadedModels:
        from opdplug.prepare import build_task
        from opdplug_local import models as local

        config, options = ctx.config, self.state(ctx).options
        target = local.load_model(config.teacher.path, "teacher.path", config.teacher.dtype,
                                  config.teacher.attn_implementation).requires_grad_(False).eval()
        tokenizer = local.load_tokenizer(config.teacher.path)
        num_layers = int(target.config.num_hidden_layers)
        aux = check_aux_layers(options.aux_layers or default_aux_layers(num_layers), num_layers)
        if options.features == "sglang":  # checked before anything is sampled: one line if a server is set up otherwise
            from .served import served_source

            self.state(ctx).source = served_source(
                options.features_urls, aux, hidden_size=int(target.config.hidden_size),
                batch_size=options.features_batch_size, vocab_size=int(target.config.vocab_size),
                retry_budget_s=options.features_retry_budget_s)
        # The kernel builds the run's task after loading; the vocabulary needs one now (same seed).
        task = build_task(ctx.registry, config.task.name, config.task.options, tokenizer)
        d2t, t2d = choose_vocab(target, task, tokenizer, options, config.run.seed)
        head_config = draft_config(target.config, draft_vocab_size=int(d2t.shape[0]), aux_layers=aux,
                                   intermediate_size=options.intermediate_size,
                                   variant=head_norms(options.variant, norm_before_fc=options.norm_before_fc))
        with torch.random.fork_rng(devices=[]):  # the head's initialisation leaves the run's RNG alone
            torch.manual_seed(config.run.seed)
            head = Eagle3Head(head_config)
        head.set_vocab(d2t, t2d)
        if options.init_from_target:
            head.init_from_target(target)
        else:
            head.set_embedding(target)
        return LoadedModels(student=Eagle3Student(head).to(ctx.device), tokenizer=tokenizer, teacher=target.to(ctx.device))

    def configure(self, ctx) -> None:
        """The held-out batch of the ``eval/*`` proxies (main process only: it alone logs)."""
        from opdplug_local.tokenization import pad_id_of, stop_token_ids

        state, seed = self.state(ctx), ctx.config.run.seed
        acc = ctx.accelerator
        if not (state.options.eval_every and state.options.eval_prompts) or (acc is not None and not acc.is_main_process):
            return
        prompts = ctx.task.prompts(state.options.eval_prompts, seed=seed, split="eval")
        sample = generate(ctx.teacher, prompts, state.options, eos_id=stop_token_ids(ctx.tokenizer, ctx.teacher),
                          pad_id=pad_id_of(ctx.tokenizer), seed=seed * 31 + 17)
        state.eval_batch = self.captured(ctx, sample)

    def preflight(self, ctx) -> dict:
        """What ``opdplug check`` prints about the head, and a finite TTT loss on one target batch."""
        from opdplug_local.tokenization import pad_id_of, stop_token_ids

        head, options = self.head(ctx), self.state(ctx).options
        prompts = ctx.task.prompts(2, seed=ctx.config.run.seed, split="eval")
        sample = generate(ctx.teacher, prompts, options, eos_id=stop_token_ids(ctx.tokenizer, ctx.teacher),
                          pad_id=pad_id_of(ctx.tokenizer), seed=0)
        with torch.no_grad():
            loss, _ = ttt_loss(head, self.captured(ctx, sample), options.ttt_steps, options.step_decay)
        if not torch.isfinite(loss):
            raise PreflightError(f"the EAGLE-3 head's TTT loss on the target's own samples is {float(loss)} before training")
        return {"eagle3": {"aux_layers": list(head.aux_layers), "sglang_layer_ids": sglang_layer_ids(head.aux_layers),
                           "draft_vocab_size": int(head.d2t.shape[0]), "ttt_steps": options.ttt_steps,
                           "trainable_params": sum(p.numel() for p in head.parameters() if p.requires_grad),
                           "initial_loss": float(loss)}}

    # -- stages -------------------------------------------------------------------------------
    def rollout(self, ctx, prompts, step: int):
        from opdplug_local.models import model_rollout

        options = self.state(ctx).options
        if options.data == "rollout":  # the configured [rollout] sampler, as the kernel's own stage calls it
            from opdplug.stages import opd_rollout as configured_rollout

            return self._no_rootless_tokens(configured_rollout(ctx=ctx, prompts=prompts, step=step))
        batch = model_rollout(
            ctx.teacher, prompts, producer=PRODUCER_TEACHER, max_new_tokens=options.max_new_tokens,
            temperature=options.temperature, top_p=1.0, tokenizer=ctx.tokenizer, generator=None,
            row_seeds=ctx.row_seeds(prompts, "eagle3", step), on_policy=False,
        )
        return self._no_rootless_tokens(batch)

    @staticmethod
    def _no_rootless_tokens(batch):
        """A token at index 0 or 1 has no chain root before it (step 0 at root t predicts t + 2):
        it is not a loss token, so the loop's token count is exactly the TTT loss's root count."""
        loss_mask_B_L = batch.loss_mask_B_L.clone()
        loss_mask_B_L[:, :2] = 0
        return batch.replace(loss_mask_B_L=loss_mask_B_L)

    def captured(self, ctx, sample) -> Batch:
        """The target's features of the target's own ``sample`` (held-out proxies, pre-flight),
        from the local target or the feature servers, as the score stage takes them."""
        head, source = self.head(ctx), self.state(ctx).source
        if source is None:
            return target_batch(ctx.teacher, sample, head.aux_layers, head.draft_to_target_Vd)
        from .served import sglang_capture

        return sglang_capture(source, sample.input_ids_B_L, sample.attention_mask_B_L, sample.completion_mask_B_L,
                              head.aux_layers, head.draft_to_target_Vd)[0]

    def score(self, ctx, batch):
        head, source = self.head(ctx), self.state(ctx).source
        if source is not None:
            from .served import served_feature_scores

            return served_feature_scores(source, batch, head.aux_layers, head.draft_to_target_Vd)
        return feature_scores(ctx.teacher, batch, head.aux_layers, head.draft_to_target_Vd)

    def student_forward(self, ctx, batch) -> HeadForward:
        return HeadForward(ctx.student, self.state(ctx).options.ttt_steps)

    def loss(self, ctx, batch, scores, credit, student: HeadForward) -> LossOutput:
        options = self.state(ctx).options
        captured = scores.captured
        terms = ttt_terms(student(captured), captured.target_logits_B_L_Vd, captured.target_argmax_B_L,
                          captured.target_draft_mass_B_L, captured.loss_mask_B_L, self.head(ctx).draft_to_target_Vd)
        # Token sums: the loop divides each by the global count of loss tokens (the chain roots).
        metrics = {f"ttt/ce_{j}": float(s.detach()) for j, s in enumerate(terms.ce_sum_J)}
        metrics.update({f"ttt/top1_{j}": float(m) for j, m in enumerate(terms.match_J)})
        metrics.update({f"ttt/accepted_k{k}": float(a) for k, a in enumerate(terms.accepted_K, start=1)})
        metrics["ttt/draft_mass"] = terms.draft_mass
        return LossOutput(loss_sum=token_sum(terms, options.step_decay), num_tokens=terms.roots, metrics=metrics)

    def step_end(self, ctx, step: int, metrics: dict) -> None:
        state = self.state(ctx)
        # Accepted drafts per root -> acceptance length (bonus token included).
        for key in [k for k in metrics if k.startswith("ttt/accepted_k")]:
            metrics[f"ttt/accept_len_k{key[len('ttt/accepted_k'):]}"] = 1.0 + metrics.pop(key)
        metrics["ttt/accept_len"] = metrics.get(f"ttt/accept_len_k{state.options.ttt_steps}")
        done = step + 1
        due = state.options.eval_every and (done % state.options.eval_every == 0 or done == ctx.config.run.steps)
        if state.eval_batch is None or not due:
            return
        head = self.head(ctx)
        was_training = head.training
        head.eval()
        with torch.no_grad():
            _, m = ttt_loss(head, state.eval_batch, state.options.ttt_steps, state.options.step_decay)
        head.train(was_training)
        metrics.update({"eval/loss": m["loss"], "eval/accept_len": m["accept_len"], "eval/draft_mass": m["draft_mass"],
                        "eval/tokens": m["tokens"]})
        metrics.update({f"eval/ce_{j}": v for j, v in enumerate(m["ce"])})
        metrics.update({f"eval/top1_{j}": v for j, v in enumerate(m["top1"])})
        metrics.update({f"eval/accept_len_k{k}": v for k, v in enumerate(m["accept_len_by_k"], start=1)})

    def save_model(self, ctx, directory: Path) -> Path:
        """The head to ``directory`` (atomically), and ``train_summary.json`` in the run directory."""
        head, state = self.head(ctx), self.state(ctx)
        out = save_head(head, directory)
        _write_json_atomically(Path(directory).parent / SUMMARY_FILE, {
            "kind": "eagle3",
            "target_dir": str(Path(ctx.config.teacher.path).resolve()),
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(state.options).items()},
            "aux_layers": list(head.aux_layers),
            "sglang_eagle_aux_hidden_state_layer_ids": sglang_layer_ids(head.aux_layers),
            "draft_vocab_size": int(head.d2t.shape[0]),
            "head_dir": str(out),
            "steps_done": ctx.config.run.steps,
        })
        return out
