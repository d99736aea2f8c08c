"""Hook implementations of cross-tokenizer OPD (entry point ``crosstok`` of ``opdplug-token``):
the ``cross_tokenizer`` scorer, the supports that map vocabularies, and the alignment report
of ``opdplug check``."""
from __future__ import annotations

from opdplug.context import derive_seed
from opdplug.errors import ConfigError
from opdplug.hookspecs import hookimpl
from opdplug.types import PRODUCER_STUDENT

from .scorer import CrossTokenizer
from .supports import CrossVocab, ProjectedTopK


@hookimpl
def opd_register_scorers(register):
    register("cross_tokenizer", CrossTokenizer)


CROSS_SUPPORTS = {
    "xtok_topk": CrossVocab("topk", "bucket"),
    "xtok_full": CrossVocab("full", "bucket"),
    "xtok_topk_uld": CrossVocab("topk", "uld"),
    "xtok_full_uld": CrossVocab("full", "uld"),
    "uld": CrossVocab("topk", "all_uld"),
    "xtok_project": ProjectedTopK(),
}


@hookimpl
def opd_register_supports(register):
    for name, support in CROSS_SUPPORTS.items():
        register(name, support)


@hookimpl
def opd_validate(ctx):
    """A cross-vocabulary support that reads the teacher's top-k, with none asked for."""
    name = ctx.config.loss.support
    if name not in CROSS_SUPPORTS:
        return
    support = ctx.component("supports", name, {}, "loss.support")
    if getattr(support, "needs_teacher_topk", False) and ctx.config.teacher.top_k <= 0:
        raise ConfigError(f"loss.support = {name!r} reads the teacher's top-k: set teacher.top_k > 0 (e.g. 32)")


PREFLIGHT_ROWS = 8
"""Student samples the alignment report of ``opdplug check`` is taken on."""


@hookimpl
def opd_preflight(ctx):
    """Before step 0: how well the teacher's tokenization lines up with the student's, on student
    samples of held-out prompts (any scorer with an ``alignment_report``)."""
    opts = ctx.config.teacher
    scorer = ctx.component("scorers", opts.scorer, opts.options, "teacher.scorer")
    if not hasattr(scorer, "alignment_report"):
        return None
    support_name = ctx.config.loss.support
    support = ctx.component("supports", support_name, {}, "loss.support")
    if getattr(scorer, "aligns", lambda: False)() and not getattr(support, "any_vocabulary", False):
        raise ConfigError(
            f"loss.support = {support_name!r} compares the two models id by id, but the teacher has another "
            f"tokenizer: use sampled, xtok_project, xtok_topk, xtok_full, their _uld variants, or uld"
        )
    from opdplug_local.models import model_rollout

    prompts = ctx.task.prompts(PREFLIGHT_ROWS, seed=derive_seed(ctx.config.run.seed, "alignment"), split="eval")
    budget = ctx.config.rollout.max_new_tokens or ctx.task.max_new_tokens(max(p.meta.get("length", 1) for p in prompts))
    batch = model_rollout(ctx.student_module(), prompts, producer=PRODUCER_STUDENT, max_new_tokens=budget,
                          temperature=ctx.config.rollout.temperature, top_p=1.0, tokenizer=ctx.tokenizer,
                          generator=ctx.generator("alignment"), on_policy=True)
    return scorer.alignment_report(batch)
