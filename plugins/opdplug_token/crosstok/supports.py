"""Supports for a teacher with another vocabulary: its mass mapped onto the student's tokens
that have the identical string, the rest compared as one bucket or by sorted probabilities.

Called like every support (``support(fn, student, scores, batch, mask_B_L, *, top_k,
chunk_size)``), with ``fn`` a divergence. At a trained position whose student token starts where
a teacher token starts (``scores.distribution_B_L``), the teacher's next-token distribution is
split into the ids both vocabularies share (``scores.vocab_map_2_M``) and the rest:

* ``xtok_topk`` / ``xtok_full``: the divergence over the shared ids of the teacher's top-k (or of
  the whole vocabulary, dense teacher) plus one bucket per side holding everything else. Both
  sides are proper distributions over M + 1 outcomes; with one tokenizer (identity map, nothing
  in the buckets) this is exactly ``teacher_topk`` / ``full``.
* ``xtok_topk_uld`` / ``xtok_full_uld``: the same, plus the ULD distance inside the buckets: the
  L1 distance between the two sides' unmapped probabilities, each sorted in decreasing order
  (top ``top_k`` of each).
* ``uld``: the ULD distance alone (Boizard et al., 2024): sorted probabilities of the two whole
  distributions, top ``top_k`` of each, plus the difference of the masses outside; it ignores
  which token is which.

Trained positions inside a chunk (the student token starts inside a teacher token) have no
teacher distribution: their value is 0 (``xtok_inner_tokens`` counts them); the ``sampled``
support covers every chunk. A teacher with the student's own vocabulary works too (identity map).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from opdplug.types import RolloutBatch, SparseDistribution, StudentOutputs, TeacherScores

from ..metrics import complement_logsumexp, entropy
from ..support_chunks import (
    SupportResult, chunk_logp, finish, gather_masked, map_chunks, metric_zeros, pair_metrics, sparse_teacher_tail,
    token_logp, upcast, with_tail,
)

Tensor = torch.Tensor
NEG = float("-inf")


def _sorted_l1(logp_a_C_R: Tensor, logp_b_C_R: Tensor) -> Tensor:
    """sum_i |a_(i) - b_(i)| of two sets of probabilities each sorted in decreasing order."""
    a = logp_a_C_R.exp().sort(dim=-1, descending=True).values
    b = logp_b_C_R.exp().sort(dim=-1, descending=True).values
    return (a - b).abs().sum(-1)


@dataclass(frozen=True)
class CrossVocab:
    """A divergence across vocabularies (see the module docstring for the names)."""

    source: Literal["topk", "full"] = "topk"
    """The teacher's top-k (sparse, any scorer) or its whole distribution (dense, local)."""
    rest: Literal["bucket", "uld", "all_uld"] = "bucket"
    """Unmapped mass: one bucket; a bucket plus the sorted-probability distance; ULD alone."""
    uses_estimator: ClassVar[bool] = False
    any_vocabulary: ClassVar[bool] = True  # reads vocab_map_2_M

    @property
    def needs_teacher_topk(self) -> bool:
        """The sparse source reads the teacher's top-k (checked before step 0)."""
        return self.source == "topk"

    def unmet(self, scores: TeacherScores) -> str:
        """What ``scores`` lack for this support and how to fix it; "" when nothing. The
        pre-flight probe asks this of the configured scorer's scores before step 0."""
        if self.source == "full" and not scores.is_dense:
            return ("needs the teacher's whole distribution (a dense, local teacher), but the teacher's scorer sends "
                    "only its top-k: use xtok_project, xtok_topk or xtok_topk_uld with teacher.top_k > 0")
        if self.source == "topk" and (scores.topk_ids_B_L_K is None or scores.topk_logprobs_B_L_K is None):
            return "needs the teacher's top-k, but the teacher's scorer sent none: set teacher.top_k > 0"
        return ""

    def __call__(self, divergence, student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch,
                 mask_B_L: Tensor, *, top_k: int = 16, chunk_size: int = 1024) -> SupportResult:
        if self.unmet(scores):
            raise ValueError(f"the {self.source} cross-vocabulary support {self.unmet(scores)}")
        g = gather_masked(student, scores, batch, mask_B_L)
        dev = g.mask_B_L.device
        V_s = student.lm_head_V_H.shape[0]
        pairs = scores.vocab_map_2_M.to(dev) if scores.vocab_map_2_M is not None else torch.arange(V_s, device=dev).repeat(2, 1)
        s_ids_M, t_ids_M = pairs[0], pairs[1]
        dist_N = (scores.distribution_B_L.to(dev).bool()[g.mask_B_L] if scores.distribution_B_L is not None
                  else torch.ones_like(g.tokens_N, dtype=torch.bool))
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N, "dist": dist_N}
        sums_extra = metric_zeros(dev)
        if self.source == "full":
            per_token["h_t"] = scores.hidden_B_L_H.to(dev)[g.mask_B_L].detach()
            w_t = scores.lm_head_V_H.detach().to(dev)
        else:
            ids_N_K = scores.topk_ids_B_L_K.to(dev)[g.mask_B_L]
            lp_N_K = upcast(scores.topk_logprobs_B_L_K.to(dev)[g.mask_B_L])
            if ids_N_K.shape[-1] > top_k:  # the scorer sent more than asked: keep the largest
                lp_N_K, pos = lp_N_K.topk(top_k, dim=-1)
                ids_N_K = ids_N_K.gather(-1, pos)
                tail_N, sums_extra["clamped"] = sparse_teacher_tail(lp_N_K)
            elif scores.tail_logmass_B_L is not None:
                tail_N = upcast(scores.tail_logmass_B_L.to(dev)[g.mask_B_L])
            else:
                tail_N, sums_extra["clamped"] = sparse_teacher_tail(lp_N_K)
            size = max(int(ids_N_K.max()) if ids_N_K.numel() else 0, int(t_ids_M.max()) if t_ids_M.numel() else 0) + 1
            t2s = torch.full((size,), -1, dtype=torch.long, device=dev)
            t2s[t_ids_M] = s_ids_M
            per_token.update(s_ids=t2s[ids_N_K], t_lp=lp_N_K, t_tail=tail_N)

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = chunk_logp(c["h_s"], w_s, g.temperature, V_s)
            token_logq_C = token_logp(logq_C_V, c["tok"])
            # A dummy column V_s at -inf: unmapped teacher ids point there on the student's side.
            logq_pad = torch.cat([logq_C_V, torch.full_like(logq_C_V[:, :1], NEG)], dim=-1)
            if self.source == "full":
                logp_C_Vt = chunk_logp(c["h_t"], w_t, g.temperature, w_t.shape[0])
                ids_C = s_ids_M.expand(logq_C_V.shape[0], -1)
                s_cols = logq_C_V[:, s_ids_M]
                t_cols = logp_C_Vt[:, t_ids_M]
                t_rest = complement_logsumexp(logp_C_Vt, t_ids_M.expand(logq_C_V.shape[0], -1))
                t_unmapped = logp_C_Vt.scatter(-1, t_ids_M.expand(logq_C_V.shape[0], -1), NEG)
                t_all = logp_C_Vt
            else:
                mapped = c["s_ids"] >= 0
                ids_C = torch.where(mapped, c["s_ids"], V_s)
                s_cols = logq_pad.gather(-1, ids_C)
                t_cols = torch.where(mapped, c["t_lp"], NEG)
                t_rest = torch.logsumexp(torch.cat([torch.where(mapped, NEG, c["t_lp"]), c["t_tail"][:, None]], -1), -1)
                t_unmapped = torch.where(mapped, NEG, c["t_lp"])
                t_all = c["t_lp"]
            s_rest = complement_logsumexp(logq_pad, ids_C)
            s_K1, t_K1 = with_tail(s_cols, s_rest), with_tail(t_cols, t_rest)
            k = min(top_k, V_s, t_all.shape[-1])
            if self.rest == "all_uld":
                s_top = logq_C_V.topk(k).values
                t_top = t_all.topk(k).values
                s_out = torch.logsumexp(logq_C_V, -1).exp() - s_top.exp().sum(-1)
                t_out = (1.0 - t_top.exp().sum(-1)).clamp(min=0.0)
                values_C = _sorted_l1(s_top, t_top) + (s_out - t_out).abs()
            else:
                values_C = divergence(s_K1, t_K1)
                if self.rest == "uld":
                    s_unmapped = logq_pad.scatter(-1, ids_C, NEG)[:, :V_s]
                    values_C = values_C + _sorted_l1(s_unmapped.topk(k).values, t_unmapped.topk(k).values)
            values_C = torch.where(c["dist"], values_C, torch.zeros_like(values_C))
            with torch.no_grad():
                d = c["dist"]
                m = {key: v for key, v in pair_metrics(s_K1[d], t_K1[d]).items()}
                m["student_entropy"] = entropy(logq_C_V).sum()
                m["tail_mass"] = t_rest[d].float().exp().sum()
                m["xtok_inner_tokens"] = (~d).sum().float()
            return (values_C, token_logq_C), m

        outs, sums = map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(sums_extra)
        return finish(g, student, *(outs or (None, None)), sums)


@dataclass(frozen=True)
class ProjectedTopK:
    """``xtok_project``: the teacher's distribution re-expressed over the student's vocabulary.

    The ``cross_tokenizer`` scorer turns the teacher's top-k at every scored position into
    ``scores.student_distribution``: each teacher entry that continues the text the student has
    written becomes the student token that would write its next bytes, and on shared boundaries
    the teacher's "this token ended" bias is undone by mixing in the entries that extend the
    previous token (see ``projection.student_distribution``). Here that sparse distribution and its tail
    are normalised; student ids that receive mass are outcomes and everything else, on both
    sides, is one bucket. Unlike the bucket supports nearly all the teacher's mass lands on named
    student tokens, so the student is never rewarded for spreading its mass, and positions inside
    a teacher token are trained too. With one tokenizer it is ``teacher_topk``.

    What it approximates: the teacher's top-k stands for its whole distribution (its tail is
    one more outcome); a student token longer than the teacher token under it gets only the mass
    of teacher tokens that contain it (not the continuation over the next teacher token); inside
    a teacher token, an entry ending exactly where the student is has its continuation at a
    position the teacher did not score, so it is dropped.
    """

    uses_estimator: ClassVar[bool] = False
    any_vocabulary: ClassVar[bool] = True  # reads student_distribution
    needs_teacher_topk: ClassVar[bool] = True  # checked before step 0
    needs_byte_level: ClassVar[bool] = True  # the projection reads each token's bytes (checked before step 0)

    @staticmethod
    def distribution(scores: TeacherScores):
        """The teacher's distribution over the student's vocabulary: the scorer's projection, or
        with one vocabulary its own top-k and tail; None when the scores carry neither."""
        if scores.student_distribution is not None:
            return scores.student_distribution
        if scores.vocab_map_2_M is None and scores.topk_ids_B_L_K is not None:
            tail = (scores.tail_logmass_B_L if scores.tail_logmass_B_L is not None
                    else sparse_teacher_tail(upcast(scores.topk_logprobs_B_L_K))[0])
            return SparseDistribution(scores.topk_ids_B_L_K, scores.topk_logprobs_B_L_K, tail)  # one vocabulary
        return None

    def unmet(self, scores: TeacherScores) -> str:
        """What ``scores`` lack for this support and how to fix it; "" when nothing (see
        ``CrossVocab.unmet``)."""
        if self.distribution(scores) is not None:
            return ""
        return ("needs the teacher's top-k (teacher.top_k > 0) re-expressed over the student's vocabulary, which "
                "the teacher's scorer did not send (with another tokenizer it needs byte-level tokenizers on both "
                "sides); otherwise use xtok_topk_uld, xtok_topk or sampled")

    def __call__(self, divergence, student: StudentOutputs, scores: TeacherScores, batch: RolloutBatch,
                 mask_B_L: Tensor, *, top_k: int = 16, chunk_size: int = 1024) -> SupportResult:
        dist = self.distribution(scores)
        if dist is None:
            raise ValueError(f"the xtok_project support {self.unmet(scores)}")
        g = gather_masked(student, scores, batch, mask_B_L)
        dev = g.mask_B_L.device
        V_s = student.lm_head_V_H.shape[0]
        per_token = {"h_s": g.student_hidden_N_H, "tok": g.tokens_N, "ids": dist.ids_B_L_J.to(dev)[g.mask_B_L],
                     "mass": upcast(dist.logmass_B_L_J.to(dev)[g.mask_B_L]),
                     "tail": upcast(dist.tail_logmass_B_L.to(dev)[g.mask_B_L])}

        def chunk_fn(c: dict, w_s: Tensor):
            logq_C_V = chunk_logp(c["h_s"], w_s, g.temperature, V_s)
            token_logq_C = token_logp(logq_C_V, c["tok"])
            keep = (c["ids"] >= 0) & (c["ids"] < V_s) & torch.isfinite(c["mass"])
            mass = torch.where(keep, c["mass"], NEG)
            log_z = torch.logsumexp(torch.cat([mass, c["tail"][:, None]], -1), -1)
            has = keep.any(-1)
            p_C_V = torch.zeros_like(logq_C_V, dtype=mass.dtype).scatter_add(
                -1, c["ids"].clamp(0, V_s - 1), (mass - log_z[:, None]).exp())
            named = p_C_V > 0
            t_C_V1 = with_tail(torch.where(named, p_C_V.log(), NEG), c["tail"] - log_z)
            s_rest = torch.logsumexp(torch.where(named, NEG, logq_C_V), -1)
            s_C_V1 = with_tail(torch.where(named, logq_C_V, NEG), s_rest)
            values_C = torch.where(has, divergence(s_C_V1, t_C_V1), torch.zeros_like(s_rest))
            with torch.no_grad():
                m = pair_metrics(s_C_V1[has], t_C_V1[has])
                m["student_entropy"] = entropy(logq_C_V).sum()
                m["tail_mass"] = (c["tail"] - log_z)[has].float().exp().sum()
                m["xtok_unprojected_tokens"] = (~has).sum().float()
            return (values_C, token_logq_C), m

        outs, sums = map_chunks(chunk_fn, per_token, (student.lm_head_V_H,), chunk_size)
        sums.update(metric_zeros(dev))
        return finish(g, student, *(outs or (None, None)), sums)
