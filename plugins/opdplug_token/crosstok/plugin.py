"""Hook implementations of cross-tokenizer OPD (entry point ``crosstok`` of ``opdplug-token``):
the ``cross_tokenizer`` scorer, the supports that map vocabularies, and the alignment report
of ``opdplug check``."""
from __future__ import annotations

from opdplug.errors import ConfigError
from opdplug.hookspecs import hookimpl

from . import preflight
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


@hookimpl
def opd_preflight(ctx):
    """Before step 0: the support against the teacher's tokenizer and scores (one-line errors,
    ``preflight``), and how well the teacher's tokenization lines up with the student's, on
    student samples of held-out prompts (any scorer with an ``alignment_report``)."""
    opts = ctx.config.teacher
    scorer = ctx.component("scorers", opts.scorer, opts.options, "teacher.scorer")
    support_name = ctx.config.loss.support
    support = ctx.component("supports", support_name, {}, "loss.support")
    preflight.refuse_id_support(scorer, support_name, support)
    preflight.refuse_unprojectable(scorer, support_name, support)
    reports_alignment = hasattr(scorer, "alignment_report")
    if not reports_alignment and support_name not in CROSS_SUPPORTS:
        return None
    batch = preflight.student_samples(ctx)
    report = scorer.alignment_report(batch) if reports_alignment else None
    if support_name in CROSS_SUPPORTS:
        preflight.refuse_unmet_scores(ctx, scorer, support_name, support, batch)
    return report
