"""Hook implementations of ``opdplug-local``, the backend that runs Hugging Face models in the
process: loading the student and teacher, the student's forward pass, saving the trained
student, the local scorers, the built-in SumChain task and the ``eval`` and ``demo`` commands."""
from __future__ import annotations

import torch

from opdplug.hookspecs import hookimpl
from opdplug.types import LoadedModels, StudentOutputs

from . import models, prefill_reuse, sampling
from .scorers import LocalScorer, NoScorer, SelfScorer


@hookimpl
def opd_register_scorers(register):
    register("local", LocalScorer, default=True)
    register("self", SelfScorer)
    register("none", NoScorer())


@hookimpl
def opd_register_verifiers(register):
    from .verifiers import register_verifiers

    register_verifiers(register)


@hookimpl
def opd_register_tasks(register):
    from .dataset_task import DatasetTask
    from .tasks import SumChain

    register("sumchain", SumChain, default=True)
    register("dataset", DatasetTask)


@hookimpl
def opd_register_commands(register):
    from .cli import DemoCommand, EvalCommand, GenerateCommand

    register("eval", EvalCommand())
    register("generate", GenerateCommand())
    register("demo", DemoCommand())


@hookimpl(trylast=True)
def opd_load_models(ctx):
    config = ctx.config
    task_factory = ctx.registry.get("tasks", config.task.name, "task.name")
    student, tokenizer = models.load_student(config, task_factory)
    teacher = None
    if config.teacher.path:
        teacher = models.load_model(config.teacher.path, "teacher.path", config.teacher.dtype,
                                    config.teacher.attn_implementation)
        scorer = ctx.registry.get("scorers", config.teacher.scorer, "teacher.scorer")
        if not getattr(scorer, "own_tokenizer", False):  # a scorer that aligns tokenizers checks its own
            models.check_tokenizers(tokenizer, models.load_tokenizer(config.teacher.path))
        teacher = teacher.requires_grad_(False).eval().to(ctx.device)
    return LoadedModels(student=student, tokenizer=tokenizer, teacher=teacher)


@hookimpl(trylast=True)
def opd_student_forward(ctx, batch):
    """The student's shifted final hidden states (no [B, L, V] logits) and its lm_head."""
    device = ctx.device
    ids, attn = batch.input_ids_B_L.to(device), batch.attention_mask_B_L.to(device)
    graph = prefill_reuse.take(batch.input_ids_B_L) if torch.is_grad_enabled() else None  # the rollout's prefill
    if graph is not None and torch.equal(graph.prompt_mask_B_P.sum(-1).cpu(), batch.prompt_lens_B.cpu()):
        hidden = prefill_reuse.completion_hidden(ctx.student, graph, ids, attn, batch.prompt_lens_B.to(device))
    else:
        hidden = sampling.final_hidden(ctx.student, ids, attn, needed_B_L=batch.loss_mask_B_L.to(device))
    return StudentOutputs(
        hidden_B_L_H=hidden,
        lm_head_V_H=sampling.lm_head_weight(ctx.student),
        temperature=ctx.config.rollout.temperature,
    )


@hookimpl(trylast=True)
def opd_save_model(ctx, directory):
    return models.export_model(ctx.student_module(), ctx.tokenizer, directory)


@hookimpl
def opd_preflight(ctx):
    if ctx.teacher is None:
        return {"tokenizers": "no local teacher"}
    scorer = ctx.registry.get("scorers", ctx.config.teacher.scorer, "teacher.scorer")
    return {"tokenizers": "aligned by the scorer" if getattr(scorer, "own_tokenizer", False) else "identical"}
