"""The teacher's next-token distribution re-expressed over the student's vocabulary, for the
``xtok_project`` support: which student token writes each teacher entry's next bytes, and how
the teacher's top-k at two positions combine into the student's next-token distribution."""
from __future__ import annotations

import bisect
import math
from typing import Optional

import torch

from opdplug.types import RolloutBatch, SparseDistribution, TeacherScores

from ..support_chunks import sparse_teacher_tail


class Projection:
    """Which student token writes a teacher token's bytes from a given offset on.

    ``next_token(t, offset)`` is the student token that begins at byte ``offset`` of teacher token
    ``t`` when the student's own tokenizer writes ``t``'s text (its pre-tokenizer and merges decide:
    " The" may be " " + "The" even where a " T" token exists), or -1 when the student's tokens of
    ``t`` have no boundary at ``offset`` (the student would not stop there) or ``t`` ends there.
    Bytes that are not text on their own (part of a character) fall back to the longest student
    token that begins the rest. The student's end of turn stands for the teacher's. Cached: the
    pairs seen are few (teacher top-k ids x offsets inside teacher tokens)."""

    def __init__(self, student_bytes, teacher_bytes, student_end: int, teacher_end: int, student_vocab: int,
                 encode=None):
        self.by_bytes: dict[bytes, int] = {}
        for i in range(student_vocab):
            piece = student_bytes.of(i) if i not in student_bytes.special else None
            if piece:
                self.by_bytes.setdefault(piece, i)
        self.longest = max((len(x) for x in self.by_bytes), default=0)
        self.student_bytes, self.teacher_bytes = student_bytes, teacher_bytes
        self.ends = (student_end, teacher_end)
        self.encode = encode
        self.cache: dict[tuple[int, int], int] = {}
        self.ext_cache: dict[bytes, tuple[int, ...]] = {}
        self.longest_teacher = 0
        self.sorted_teacher: Optional[list] = None
        self.sorted_keys: list[bytes] = []

    def bytes_of(self, teacher_id: int) -> Optional[bytes]:
        return self.teacher_bytes.of(teacher_id) if teacher_id not in self.teacher_bytes.special else None

    def next_token(self, teacher_id: int, offset: int) -> int:
        key = (teacher_id, offset)
        if key not in self.cache:
            self.cache[key] = self._next(teacher_id, offset)
        return self.cache[key]

    def _next(self, teacher_id: int, offset: int) -> int:
        if teacher_id == self.ends[1]:
            return self.ends[0] if offset == 0 else -1
        tb = self.bytes_of(teacher_id)
        if not tb or len(tb) <= offset:
            return -1
        if self.encode is not None:
            try:
                ids = self.encode(tb.decode("utf-8"))
            except UnicodeDecodeError:  # part of a character: no text to tokenize
                ids = None
            if ids:
                at = 0
                for i in ids:
                    if at == offset:
                        return int(i)
                    piece = self.student_bytes.of(i) or b""
                    at += len(piece)
                    if at > offset:
                        return -1
                return -1
        rest = tb[offset:]
        for n in range(min(len(rest), self.longest), 0, -1):
            sid = self.by_bytes.get(rest[:n])
            if sid is not None:
                return sid
        return -1

    def longest_teacher_token(self) -> int:
        """Bytes of the teacher's longest token (its sorted vocabulary is built once)."""
        self._sort_teacher()
        return self.longest_teacher

    def _sort_teacher(self) -> None:
        if self.sorted_teacher is None:
            n = len(self.teacher_bytes.tokenizer)
            self.sorted_teacher = sorted((tb, i) for i in range(n) if i != self.ends[1] and (tb := self.bytes_of(i)))
            self.sorted_keys = [tb for tb, _ in self.sorted_teacher]
            self.longest_teacher = max((len(tb) for tb in self.sorted_keys), default=0)

    def extensions(self, written: bytes) -> tuple[int, ...]:
        """The teacher tokens that go on past ``written`` where the student's tokenizer has a
        boundary: tokens longer than ``written`` that begin with it, whose text the student's
        tokenizer writes with a token boundary after ``written`` (``next_token(t, len) >= 0``).
        These are the continuations that the teacher's whole tokens up to the end of ``written``
        leave out and the student's tokens of the same bytes keep (" 3" against " 32" when the
        student writes " 3", "2"). With one tokenizer there are none. Cached."""
        if written not in self.ext_cache:
            out: list[int] = []
            if written:
                self._sort_teacher()
                at = bisect.bisect_right(self.sorted_keys, written)
                while at < len(self.sorted_keys) and self.sorted_keys[at].startswith(written):
                    t = self.sorted_teacher[at][1]
                    if self.next_token(t, len(written)) >= 0:
                        out.append(t)
                    at += 1
            self.ext_cache[written] = tuple(out)
        return self.ext_cache[written]

    def entries(self, ids_K: list, lps_K: list, written: bytes) -> list:
        """(student id, log-prob) of each top-k teacher entry that continues ``written``."""
        out = []
        for t, lp in zip(ids_K, lps_K):
            if lp == float("-inf"):
                continue
            tb = self.bytes_of(t)
            if written and (tb is None or not tb.startswith(written)):
                continue
            sid = self.next_token(t, len(written))
            if sid >= 0:
                out.append((sid, lp))
        return out


def student_distribution(proj: Projection, batch: RolloutBatch, rows: list, inner: TeacherScores) -> SparseDistribution:
    """The teacher's next-token distribution over the student's vocabulary at every scored
    position of ``batch`` (``rows``: the scorer's aligned rows; ``inner``: the teacher's scores
    on its own tokens, with top-k): ``TeacherScores.student_distribution``.

    At a student position the student has written ``u`` of teacher token ``k`` (``u`` empty on a
    shared boundary). The teacher's tokens of the text, ``w_0 .. w_{k-1}``, are one way to write
    it; any teacher token at an earlier position ``i`` that begins with the bytes from ``i`` to
    here (``w_i .. w_{k-1}`` then ``u``) and goes on past them is another, and where the student
    wrote a prefix of a word the teacher writes whole ("alp" of "alpha"), the teacher's own tokens
    of that prefix are ones it never writes, so its distributions after them mean nothing. So the
    distribution is a mixture, each part weighted by the teacher's probability of its path:

    * the entries at ``k`` that begin with ``u``, weighted by P(w_0 .. w_{k-1});
    * for each earlier ``i`` (while the bytes from ``i`` on are shorter than the teacher's longest
      token), the entries at ``i`` that begin with those bytes and go on, weighted by
      P(w_0 .. w_{i-1}),

    each entry as the student token that writes its next bytes (``Projection.next_token``; an
    entry the student's tokenizer would not cut there is dropped). On a shared boundary right
    after ``w`` this undoes the teacher's "``w`` ended" bias (after " 5", a teacher with a " 54"
    token is sure the number is over). With one tokenizer no earlier entry qualifies and this is
    the teacher's own top-k. The support normalises the result with its tail.
    """
    B, L = batch.input_ids_B_L.shape
    t_ids = inner.topk_ids_B_L_K.cpu().tolist()
    t_lps = inner.topk_logprobs_B_L_K.float().cpu().tolist()
    tails = (inner.tail_logmass_B_L.float().cpu() if inner.tail_logmass_B_L is not None
             else sparse_teacher_tail(inner.topk_logprobs_B_L_K.float().cpu())[0]).tolist()
    token_lp = inner.token_logprobs_B_L.float().cpu().tolist()
    longest = proj.longest_teacher_token()
    per_pos: dict[tuple[int, int], tuple[list, float]] = {}
    for b, r in enumerate(rows):
        if r.failed:
            continue
        P, Pt = int(batch.prompt_lens_B[b]), len(r.teacher_prompt)
        before = [0.0]  # before[i]: log P(the teacher's tokens before completion token i)
        for k in range(len(r.teacher_completion)):
            before.append(before[-1] + token_lp[b][Pt + k])
        for j, cover in enumerate(r.cover):
            if cover is None:
                continue
            k, written = cover
            pos = Pt + k
            here, tail_here = proj.entries(t_ids[b][pos], t_lps[b][pos], written), tails[b][pos]
            if not here:  # no top-k entry continues the text: the teacher token actually there does,
                # and its log-prob is known (it leaves the tail). Only then, so that with one
                # tokenizer this stays the teacher's top-k exactly.
                cand_ids, cand_lps, tail_here = _with_token(t_ids[b][pos], t_lps[b][pos], tail_here,
                                                            r.teacher_completion[k], token_lp[b][pos])
                here = proj.entries(cand_ids, cand_lps, written)
            earlier, u = [], written
            for i in range(k - 1, -1, -1):
                piece = proj.bytes_of(r.teacher_completion[i])
                if piece is None:  # a special token: nothing runs across it
                    break
                u = piece + u
                if len(u) >= longest:
                    break
                earlier += [(sid, lp + before[i]) for sid, lp in proj.entries(t_ids[b][Pt + i], t_lps[b][Pt + i], u)]
            per_pos[(b, P + j)] = _mixture(earlier, here, tail_here, before[k]) if earlier else (here, tail_here)
    J = max((len(e) for e, _ in per_pos.values()), default=1) or 1
    ids = torch.full((B, L, J), -1, dtype=torch.long)
    mass = torch.full((B, L, J), float("-inf"))
    tail = torch.zeros(B, L)
    for (b, pos), (entries, t) in per_pos.items():
        if entries:
            ids[b, pos, :len(entries)] = torch.tensor([e[0] for e in entries], dtype=torch.long)
            mass[b, pos, :len(entries)] = torch.tensor([e[1] for e in entries])
        tail[b, pos] = t
    return SparseDistribution(ids_B_L_J=ids, logmass_B_L_J=mass, tail_logmass_B_L=tail)


def _mixture(earlier: list, here: list, tail: float, before_k: float) -> tuple[list, float]:
    """``earlier`` (log masses on their paths) with ``here`` and ``tail`` weighted by the path to
    ``k`` (``before_k``), shifted so that the largest is 0 (the path may be -inf: a teacher that
    gives its own split of the text no mass)."""
    parts = earlier + [(sid, lp + before_k) for sid, lp in here]
    top = max([lp for _, lp in parts] + [tail + before_k])
    if top == float("-inf"):
        return here, tail
    return [(sid, lp - top) for sid, lp in parts], tail + before_k - top


def _with_token(ids: list, lps: list, tail: float, token: int, token_lp: float) -> tuple[list, list, float]:
    """The top-k with the teacher's own token added when missing (its mass taken off the tail)."""
    if token in ids or token_lp == float("-inf"):
        return ids, lps, tail
    rest = math.exp(tail) - math.exp(token_lp)
    return ids + [token], lps + [token_lp], math.log(rest) if rest > 1e-30 else float("-inf")


def _logsumexp(xs: list) -> float:
    finite = [x for x in xs if x != float("-inf")]
    if not finite:
        return float("-inf")
    top = max(finite)
    return top + math.log(sum(math.exp(x - top) for x in finite))



def ended_corrections(proj: Projection, rows: list, inner: TeacherScores) -> dict[int, torch.Tensor]:
    """Per aligned row ``b``, per chunk ``c``: e_c = log P_text(text through the chunk) - log
    P(the teacher's tokens through the chunk), 0 where nothing goes on past the chunk's end.

    The teacher's log-prob of a chunk is that of its whole tokens: of the text AND of a teacher
    token ending where the chunk ends (its " 3" leaves out " 32"), while the student's log-prob
    of the same bytes leaves the text open (it writes " 32" as " 3", "2"). The chunk scores then
    telescope to the right sequence total, but each chunk is biased: the chunk ending on " 3" too
    unlikely, the next one ("." after " 3": the teacher is sure the number ended) too likely, so a
    per-chunk estimator pushes the student to end numbers early. ``chunk_lp + e_c - e_{c-1}`` is
    the teacher's log-prob of the chunk's bytes given the text before it, with the same sequence
    total (e is 0 after an end of turn). ``text_prefix`` says how P_text is taken."""
    out: dict[int, torch.Tensor] = {}
    queries, where = [], []
    for b, r in enumerate(rows):
        if r.failed:
            continue
        out[b] = torch.zeros(r.num_chunks, dtype=torch.float64)
        last: dict[int, int] = {}
        for k, c in enumerate(r.teacher_chunks):
            last[c] = k
        for c, k in last.items():
            queries.append((b, k, None))
            where.append((b, c))
    for (b, c), (f, whole) in zip(where, text_prefix(proj, rows, inner, queries)):
        out[b][c] = f - whole if math.isfinite(f) and math.isfinite(whole) else 0.0
    return out


def text_prefix(proj: Projection, rows: list, inner: TeacherScores, queries: list) -> list[tuple[float, float]]:
    """For each query ``(b, k, cut)``: the teacher's log-probability that row ``b``'s completion
    begins with the bytes of its teacher tokens before ``k`` and the first ``cut`` bytes of token
    ``k`` (``cut`` None: all of it), and the log-prob of the teacher's tokens through ``k``.

    P_text is taken along the teacher's tokens of the text: for each of those tokens ``i <= k``,
    the probability of the tokens before ``i`` times the mass of the teacher tokens at ``i`` that
    begin with the bytes from ``i``'s start to the cut and go on past it, where the student's
    tokenizer has a boundary at the cut (``Projection.extensions``; inside ``k``, ``k`` itself
    too); at the end of ``k``, plus the probability of the tokens through ``k``. Over the full
    vocabulary when the scores are dense, else over the top-k (``k``'s own log-prob is always
    known); continuations outside it are missed."""
    token_lp = inner.token_logprobs_B_L.double().cpu()
    need: list[tuple[int, int, int, tuple, float]] = []  # (query, b, teacher position, ids, log P(tokens before))
    terms: list[list[float]] = []
    wholes: list[float] = []
    for q, (b, k, cut) in enumerate(queries):
        r = rows[b]
        Pt = len(r.teacher_prompt)
        A = [0.0] + token_lp[b, Pt:Pt + k].cumsum(0).tolist()  # A[i]: log P(the tokens before i)
        whole = A[k] + float(token_lp[b, Pt + k])
        wholes.append(whole)
        w = r.teacher_completion[k]
        piece = proj.bytes_of(w)
        inside = cut is not None and piece is not None and cut < len(piece)
        terms.append([] if inside else [whole])
        if w == proj.ends[1] or piece is None:
            continue
        written = piece[:cut] if inside else piece
        for i in range(k, -1, -1):
            if i < k:
                p = proj.bytes_of(r.teacher_completion[i])
                if p is None:
                    break
                written = p + written
            ext = proj.extensions(written)
            if inside and i == k:
                ext = tuple(t for t in ext if t != w) + (w,)
            if ext:
                need.append((q, b, Pt + i, ext, A[i]))
            if proj.longest_teacher and len(written) >= proj.longest_teacher:
                break  # no teacher token starting further back is long enough to go on past the cut
    if need and inner.is_dense:
        h = inner.hidden_B_L_H
        for at in range(0, len(need), 256):
            part = need[at:at + 256]
            bs = torch.tensor([n[1] for n in part], dtype=torch.long, device=h.device)
            ps = torch.tensor([n[2] for n in part], dtype=torch.long, device=h.device)
            logits = (h[bs, ps] @ inner.lm_head_V_H.T).double() / float(inner.temperature)
            logp = torch.log_softmax(logits, dim=-1).cpu()
            for j, (q, _, _, ext, a) in enumerate(part):
                terms[q].append(a + float(torch.logsumexp(logp[j, list(ext)], dim=0)))
    elif need and inner.topk_ids_B_L_K is not None and inner.topk_logprobs_B_L_K is not None:
        ids, lps = inner.topk_ids_B_L_K.cpu(), inner.topk_logprobs_B_L_K.double().cpu()
        for q, b, pos, ext, a in need:
            wanted = set(ext)
            found = {t: float(lp) for t, lp in zip(ids[b, pos].tolist(), lps[b, pos].tolist()) if t in wanted}
            own = rows[b].teacher_completion[pos - len(rows[b].teacher_prompt)]
            if own in wanted:  # the token actually there: its log-prob is known even outside the top-k
                found[own] = float(token_lp[b, pos])
            terms[q].append(a + _logsumexp(list(found.values())))
    elif need:  # no distribution to read the continuations from: whole tokens only
        for q, b, pos, ext, a in need:
            own = rows[b].teacher_completion[pos - len(rows[b].teacher_prompt)]
            if own in ext:
                terms[q].append(a + float(token_lp[b, pos]))
    return [(_logsumexp(t), whole) for t, whole in zip(terms, wholes)]
