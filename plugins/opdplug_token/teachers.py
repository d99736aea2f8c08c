"""Teachers beyond a bigger model: a privileged-context teacher, the student's own base weights
(LoRA off), and an outcome verifier."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from opdplug.errors import ConfigError
from opdplug_local.models import pad_id_of, score_with_model
from opdplug.types import TeacherScores


@dataclass(frozen=True)
class PrivilegedContext:
    """On-policy self-distillation: a model that sees extra context scores the student's tokens.

    The teacher's input is ``BOS + context + prompt + completion`` while the student saw only
    ``prompt + completion``; scores are realigned onto the student's positions. The context is
    the task's privileged text (e.g. the reference answer) or a fixed ``instruction``. A task
    that renders chat prompts gives the privileged prompt whole (``privileged_prompt_ids``: the
    context inside the template), and the teacher sees that prompt + the completion.
    """

    model: Literal["teacher", "student"] = "teacher"
    """Which weights score: the local teacher, or the student itself (no gradient)."""
    context: Literal["task", "instruction"] = "task"
    """``task``: each prompt's ``privileged_ids``; ``instruction``: the text below."""
    instruction: str = ""
    """Text placed before the prompt when ``context = "instruction"``."""
    chunk_size: int = 1024
    """Tokens per chunk of the lm-head when scoring."""

    def __call__(self, ctx, batch) -> TeacherScores:
        model = ctx.student_module() if self.model == "student" else ctx.teacher
        if model is None:
            raise ConfigError("teacher.options.model = 'teacher' needs teacher.path; or use model = 'student'")
        tok = ctx.tokenizer
        if self.context == "instruction":
            if not self.instruction:
                raise ConfigError("teacher.options.instruction is empty; give the text the teacher sees")
            shared = tok(self.instruction, add_special_tokens=False)["input_ids"]
        rows, offsets = [], []
        for i, prompt in enumerate(batch.prompts):
            ids = batch.input_ids_B_L[i][batch.attention_mask_B_L[i].bool()].tolist()
            if self.context == "task" and prompt.privileged_prompt_ids:  # rendered through the template
                rows.append(list(prompt.privileged_prompt_ids) + ids[len(prompt.prompt_ids):])
                offsets.append(len(prompt.privileged_prompt_ids) - len(prompt.prompt_ids))
                continue
            extra = list(prompt.privileged_ids) if self.context == "task" else shared
            has_bos = bool(ids) and ids[0] == tok.bos_token_id
            rows.append(ids[:1] + extra + ids[1:] if has_bos else extra + ids)
            offsets.append(len(extra))
        L = max(len(r) for r in rows)
        ids_B_L = torch.full((len(rows), L), pad_id_of(tok), dtype=torch.long)
        attn_B_L = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids_B_L[i, : len(r)] = torch.tensor(r)
            attn_B_L[i, : len(r)] = 1
        return score_with_model(
            model, batch, temperature=ctx.config.rollout.temperature, top_k=ctx.config.teacher.top_k,
            chunk_size=self.chunk_size, input_ids_B_L=ids_B_L, attention_mask_B_L=attn_B_L,
            offset_B=torch.tensor(offsets),
        )


@dataclass(frozen=True)
class BaseModel:
    """``base_model``: the student's own base weights, its LoRA adapter switched off, score the
    student's tokens (peft's ``disable_adapter()``, no gradient).

    One copy of the weights serves both sides: distilling toward the weights the adapter sits
    on costs no teacher memory and no ``teacher.path``. With a fresh adapter (B = 0) the
    student IS its base, so the loss starts at 0 and only grows as the adapter drifts (a KL
    anchor, e.g. beside a verifier's reward); with ``student.adapter`` = an earlier LoRA run
    (SFT on new knowledge), it pulls that adapter's behaviour back toward the original weights
    (the continual-learning recipe, ``configs/self_distill_lora.toml``). Needs
    ``student.lora_r > 0``.
    """

    def check(self, ctx) -> None:
        if not hasattr(ctx.student_module(), "disable_adapter"):
            raise ConfigError(
                "teacher.scorer = 'base_model' needs a LoRA student (student.lora_r > 0): "
                "its teacher is the student's base weights with the adapter switched off"
            )

    def __call__(self, ctx, batch) -> TeacherScores:
        self.check(ctx)
        model = ctx.student_module()
        with torch.no_grad(), model.disable_adapter():
            return score_with_model(
                model, batch, temperature=ctx.config.rollout.temperature,
                top_k=ctx.config.teacher.top_k, chunk_size=ctx.config.loss.chunk_size,
            )


@dataclass(frozen=True)
class TaskVerifier:
    """Outcome reward from the task's own checker (1 if the answer is right, else 0)."""

    def __call__(self, ctx, batch) -> torch.Tensor:
        rewards = []
        for i, prompt in enumerate(batch.prompts):
            keep = batch.loss_mask_B_L[i].bool()
            rewards.append(float(ctx.task.verify(prompt, batch.input_ids_B_L[i][keep].tolist())))
        return torch.tensor(rewards, dtype=torch.float32)
