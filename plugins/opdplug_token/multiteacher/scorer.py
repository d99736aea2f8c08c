"""``multi_teacher``: several ``[[teachers]]``, each prompt scored by the teacher (or the weighted
mixture of teachers) its router names.

Each teacher has its own scorer, model directory or URL, tokenizer and options. A teacher whose
tokenizer writes the student's ids is scored on today's exact path; any other is wrapped in the
``cross_tokenizer`` scorer. The rows routed to a teacher are scored together, once per teacher.

What comes back: the teacher's log-prob of every token (for a mixture, log sum_i w_i p_i(x),
the mixture's probability of the student's token); the teacher's top-k where every teacher
shares the student's vocabulary and each row has one teacher; and where a teacher of another
family projected its top-k onto the student's vocabulary and each row has one teacher, each
row's distribution over the student's vocabulary. So the loss supports are ``sampled`` (any
teachers), ``teacher_topk`` (same-vocabulary teachers, ``teacher.top_k`` > 0) and
``xtok_project`` (any teachers with byte-level tokenizers, ``teacher.top_k`` > 0).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from opdplug.errors import ConfigError, PreflightError
from opdplug.types import RolloutBatch, SparseDistribution, TeacherScores
from opdplug_local.models import load_model
from opdplug_local.tokenization import check_tokenizers, load_tokenizer

from ..crosstok.scorer import CrossTokenizer, TeacherView
from ..crosstok.supports import ProjectedTopK


@dataclass(frozen=True)
class TeacherSpec:
    """One ``[[teachers]]`` entry."""

    name: str = ""
    """How routes and metrics name this teacher."""
    scorer: str = "local"
    """The scorer that scores for it (``local``, ``sglang``, a plugin's)."""
    path: str = ""
    """A local model directory (the ``local`` scorer's model; its tokenizer unless ``tokenizer``)."""
    tokenizer: str = ""
    """The teacher's tokenizer directory when it is not ``path`` (e.g. a server's model)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype when ``path`` is loaded."""
    options: dict = field(default_factory=dict)
    """Options of its scorer (e.g. ``url`` for ``sglang``)."""
    template_kwargs: dict = field(default_factory=dict)
    """Chat-template switches when its tokenizer is not the student's."""


@dataclass(frozen=True)
class MultiTeacher:
    """``multi_teacher``: route each prompt to its teachers (see the module docstring)."""

    own_tokenizer: ClassVar[bool] = True  # each teacher's tokenizer is checked (or aligned) on its own

    router: str = "column"
    """A registered teacher router (``column``, ``mixture``, a plugin's)."""
    router_options: dict = field(default_factory=dict)
    """Options of the router (e.g. ``column`` and ``routes``)."""
    cache_dir: str = ""
    """A directory for teacher-score caches: each teacher whose scorer has a ``cache_dir`` option
    gets ``<cache_dir>/<teacher name>`` (one cache per teacher)."""
    state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def setup(self, ctx) -> None:
        specs = list(getattr(ctx.config, "teachers", []) or [])
        if not specs:
            raise ConfigError("teacher.scorer = 'multi_teacher' needs [[teachers]] entries (name, path or scorer options)")
        names = [s.name for s in specs]
        if "" in names or len(set(names)) != len(names):
            raise ConfigError(f"every [[teachers]] entry needs a unique name, got {names}")
        router = ctx.registry.build("teacher_routers", self.router, self.router_options, "teacher.options.router")
        missing = sorted(router.teachers_named() - set(names))
        if missing:
            raise ConfigError(f"teacher {missing[0]!r} is routed to but not defined: add a [[teachers]] entry named "
                              f"{missing[0]!r} (defined: {', '.join(names)})")
        self.state.update(router=router, teachers={}, counts={n: [0, 0, 0.0] for n in names})
        for spec in specs:
            self.state["teachers"][spec.name] = self.build_teacher(ctx, spec)
        self.refuse_mixed_families(router)

    def refuse_mixed_families(self, router) -> None:
        """Mixtures are taken token by token (log sum_i w_i p_i(x)), so every teacher a router
        mixes must share the student's tokens; said before step 0 for routers that list their
        mixtures, at scoring time for others."""
        teachers = self.state["teachers"]
        for mixture in getattr(router, "mixtures", lambda: [])():
            cross = sorted(n for n in mixture if isinstance(teachers[n][0], CrossTokenizer) and teachers[n][0].aligns())
            if cross:
                raise ConfigError(f"a mixture of teachers needs teachers that share the student's tokenizer, but "
                                  f"teacher {cross[0]!r} has another: route it alone")

    def build_teacher(self, ctx, spec: TeacherSpec):
        """(scorer, view) for one teacher: the exact path when it shares the student's tokenizer."""
        model = None
        if spec.path:
            model = load_model(spec.path, f"teachers.{spec.name}.path", spec.dtype).requires_grad_(False).eval().to(ctx.device)
        tok_path = spec.tokenizer or spec.path
        if not tok_path:
            raise ConfigError(f"[[teachers]] {spec.name!r} needs a path or a tokenizer directory")
        teacher_tok = load_tokenizer(tok_path)
        options = dict(spec.options)
        inner_cls = ctx.registry.get("scorers", spec.scorer, f"teachers.{spec.name}.scorer")
        if self.cache_dir and dataclasses.is_dataclass(inner_cls) and "cache_dir" in {f.name for f in dataclasses.fields(inner_cls)}:
            options.setdefault("cache_dir", f"{self.cache_dir}/{spec.name}")
        try:
            check_tokenizers(ctx.tokenizer, teacher_tok)
        except PreflightError:
            wrapped = CrossTokenizer(scorer=spec.scorer, options=options, template_kwargs=spec.template_kwargs)
            wrapped.bind(ctx, teacher_tok, teacher=model)
            return wrapped, ctx
        scorer = ctx.registry.build("scorers", spec.scorer, options, f"teachers.{spec.name}.scorer")
        view = TeacherView(ctx, tokenizer=ctx.tokenizer, teacher=model)
        if hasattr(scorer, "setup"):
            scorer.setup(view)
        return scorer, view

    def __call__(self, ctx, batch: RolloutBatch) -> TeacherScores:
        if not self.state:
            self.setup(ctx)
        router, teachers = self.state["router"], self.state["teachers"]
        routes = [router(p) for p in batch.prompts]
        B, L = batch.input_ids_B_L.shape
        mask = batch.loss_mask_B_L.bool()
        logw_lp = {}  # teacher -> [B, L] of log w + log p (-inf where not routed)
        parts: dict[str, TeacherScores] = {}
        for name, (scorer, view) in teachers.items():
            rows = torch.tensor([b for b, r in enumerate(routes) if name in r], dtype=torch.long)
            if rows.numel() == 0:
                continue
            sub = batch.select(rows)
            with torch.no_grad():
                scores = scorer(view, sub)
            parts[name] = (rows, scores)
            full = torch.full((B, L), float("-inf"))
            w = torch.tensor([routes[b][name] for b in rows.tolist()]).log()
            full[rows] = scores.token_logprobs_B_L.float().cpu() + w[:, None]
            logw_lp[name] = full
            c = self.state["counts"][name]
            sub_mask = sub.loss_mask_B_L.bool()
            c[0] += int(rows.numel())
            c[1] += int(sub_mask.sum())
            c[2] += float((sub.sampling_logprobs_B_L.float() - scores.token_logprobs_B_L.float().cpu())[sub_mask].sum())
        mixed = [r for r in routes if len(r) > 1]
        if mixed and any(s.token_groups_B_L is not None for _, s in parts.values()):
            raise ConfigError("a mixture of teachers needs teachers that share the student's tokenizer: their log-probs "
                              "are mixed token by token")
        token_lp = torch.logsumexp(torch.stack(list(logw_lp.values())), 0)
        token_lp = torch.where(mask, token_lp, torch.zeros_like(token_lp))
        out = dict(token_logprobs_B_L=token_lp, temperature=next(iter(parts.values()))[1].temperature)
        self.merge_alignment(out, parts, B, L)
        if not mixed:
            self.merge_topk(out, parts, B, L)
            self.merge_student_distribution(out, parts, B, L)
        return TeacherScores(**out)

    @staticmethod
    def merge_alignment(out: dict, parts: dict, B: int, L: int) -> None:
        """Groups and scored positions of the teachers that aligned their rows (others: singletons)."""
        if not any(s.token_groups_B_L is not None or s.scored_B_L is not None for _, s in parts.values()):
            return
        groups = torch.arange(B * L).view(B, L)
        scored = torch.ones(B, L, dtype=torch.bool)
        for rows, s in parts.values():
            if s.token_groups_B_L is not None:  # renumbered: ids unique in the whole batch
                g = s.token_groups_B_L.cpu()
                groups[rows] = torch.where(g >= 0, g + B * L + rows[:, None] * L * L, g)
            if s.scored_B_L is not None:
                scored[rows] = s.scored_B_L.cpu().bool()
        out.update(token_groups_B_L=groups, scored_B_L=scored)

    @staticmethod
    def merge_topk(out: dict, parts: dict, B: int, L: int) -> None:
        """Top-k fields, when every teacher sent them in the student's vocabulary with one width."""
        scores = [s for _, s in parts.values()]
        if any(s.topk_ids_B_L_K is None or s.vocab_map_2_M is not None for s in scores):
            return
        widths = {s.topk_ids_B_L_K.shape[-1] for s in scores}
        if len(widths) != 1:
            return
        K = widths.pop()
        ids = torch.zeros(B, L, K, dtype=torch.long)
        lp = torch.full((B, L, K), float("-inf"))
        tail = torch.zeros(B, L)
        for rows, s in parts.values():
            ids[rows], lp[rows] = s.topk_ids_B_L_K.cpu(), s.topk_logprobs_B_L_K.float().cpu()
            if s.tail_logmass_B_L is not None:
                tail[rows] = s.tail_logmass_B_L.float().cpu()
        out.update(topk_ids_B_L_K=ids, topk_logprobs_B_L_K=lp,
                   tail_logmass_B_L=tail if all(s.tail_logmass_B_L is not None for s in scores) else None)

    @staticmethod
    def merge_student_distribution(out: dict, parts: dict, B: int, L: int) -> None:
        """Each row's teacher distribution over the student's vocabulary (``xtok_project``): a
        teacher of another family sends its projection, one of the student's family its own
        top-k and tail. Only when some teacher projected (otherwise the merged top-k is already
        that distribution), and only when every routed teacher has one: a batch trained on the
        projection in some rows and nothing in others would fail silently."""
        scores = [s for _, s in parts.values()]
        if all(s.student_distribution is None for s in scores):
            return
        dists = [ProjectedTopK.distribution(s) for s in scores]
        if any(d is None for d in dists):
            return
        J = max(d.ids_B_L_J.shape[-1] for d in dists)
        ids = torch.full((B, L, J), -1, dtype=torch.long)
        mass = torch.full((B, L, J), float("-inf"))
        tail = torch.zeros(B, L)
        for (rows, _), d in zip(parts.values(), dists):
            width = d.ids_B_L_J.shape[-1]
            ids[rows, :, :width] = d.ids_B_L_J.cpu()
            mass[rows, :, :width] = d.logmass_B_L_J.float().cpu()
            tail[rows] = d.tail_logmass_B_L.float().cpu()
        out["student_distribution"] = SparseDistribution(ids_B_L_J=ids, logmass_B_L_J=mass, tail_logmass_B_L=tail)

    def metrics(self) -> dict:
        out = {}
        for name, (rows, tokens, kl) in self.state.get("counts", {}).items():
            out[f"teacher/{name}/rows"] = float(rows)
            out[f"teacher/{name}/reverse_kl"] = kl / max(tokens, 1)
        for name, (scorer, _) in self.state.get("teachers", {}).items():
            if hasattr(scorer, "metrics"):
                out.update({f"teacher/{name}/{k}": v for k, v in (scorer.metrics() or {}).items()})
        for c in self.state.get("counts", {}).values():
            c[:] = [0, 0, 0.0]
        return out

    def close(self) -> None:
        for scorer, _ in self.state.get("teachers", {}).values():
            if hasattr(scorer, "close"):
                scorer.close()

    def alignment_report(self, batch: RolloutBatch) -> dict:
        """Per teacher: its routed rows and, for teachers with another tokenizer, the alignment."""
        report = {}
        routes = [self.state["router"](p) for p in batch.prompts]
        for name, (scorer, _) in self.state["teachers"].items():
            rows = torch.tensor([b for b, r in enumerate(routes) if name in r], dtype=torch.long)
            report[f"teacher_{name}_rows"] = int(rows.numel())
            if isinstance(scorer, CrossTokenizer) and rows.numel():
                report.update({f"teacher_{name}_{k}": v for k, v in scorer.alignment_report(batch.select(rows)).items()})
        return report

    def not_byte_level(self) -> str:
        """The first teacher of another family whose tokenizers cannot be projected through
        (see ``CrossTokenizer.not_byte_level``); "" when none."""
        for name, (scorer, _) in self.state.get("teachers", {}).items():
            problem = scorer.not_byte_level() if isinstance(scorer, CrossTokenizer) else ""
            if problem:
                return f"{problem} (teacher {name!r})"
        return ""

    def aligns(self) -> bool:
        return any(isinstance(s, CrossTokenizer) and s.aligns() for s, _ in self.state.get("teachers", {}).values())
