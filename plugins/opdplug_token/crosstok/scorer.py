"""``cross_tokenizer``: a teacher with its own tokenizer and chat template scores the student's
rollouts, through any scorer (``local``, ``sglang``, a plugin's).

For each row the conversation is rendered again with the teacher's template (the prompt's
``chat_messages``; a raw prompt's text otherwise), the completion's text is tokenized by the
teacher, and the two tokenizations are aligned by byte spans (``spans.align``). The wrapped
scorer scores the teacher's ids; the scores come back onto the student's positions:

* ``token_logprobs_B_L``: per chunk, the teacher's log-prob of the chunk's bytes given the text
  before it: the sum of its log-probs over the chunk's tokens (the chain rule) plus the "token
  ended" term (``projection.ended_corrections``: a teacher token that ends with the chunk says
  the text ended there, the student's tokens of the same bytes do not), split evenly over the
  chunk's student tokens; ``token_groups_B_L`` names the chunks, so a sampled-token loss is
  taken per chunk; over a whole completion the sum is the chain-rule one;
* top-k and dense fields at the first student token of each chunk (where both tokenizations
  start a token at the same byte), still in the teacher's vocabulary, with ``vocab_map_2_M``
  for the ``xtok_*`` supports;
* rows whose text the teacher cannot reproduce byte for byte are left out (``scored_B_L``) and
  counted in ``xtok/rows_skipped``.

A teacher whose tokenizer turns text into the student's ids takes the exact same-tokenizer path
(no alignment), unless ``align_same`` asks for the alignment anyway (the exactness tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

import torch

from opdplug.errors import ConfigError, PreflightError
from opdplug.types import PRODUCER_PROMPT, PRODUCER_STUDENT, Prompt, RolloutBatch, SparseDistribution, TeacherScores
from opdplug_local import chat
from opdplug_local.tokenization import check_tokenizers, load_tokenizer, pad_id_of, stop_token_ids

from .projection import Projection, ended_corrections, student_distribution
from .spans import TokenBytes, align, boundaries, covering_tokens, is_byte_level, single_byte_ids
from .vocab import VocabMap, build_vocab_map, end_of_turn_id

MESSAGES_KEY = "chat_messages"
"""``Prompt.meta`` key under which chat tasks keep the prompt's messages for re-rendering."""


class TeacherView:
    """The run context as a teacher with its own tokenizer (and model) sees it."""

    def __init__(self, ctx, *, tokenizer, teacher=None, config=None):
        self.__dict__.update(_ctx=ctx, tokenizer=tokenizer, teacher=teacher if teacher is not None else ctx.teacher,
                             config=config if config is not None else ctx.config)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_ctx"], name)


@dataclass
class _Row:
    """One row rendered for the teacher, or the reason it could not be."""

    teacher_prompt: list[int]
    teacher_completion: list[int] = field(default_factory=list)
    student_chunks: tuple[int, ...] = ()
    teacher_chunks: tuple[int, ...] = ()
    num_chunks: int = 0
    cover: tuple = ()
    """Per student token: (index of the teacher token covering its first byte, bytes of that
    teacher token already written before it), or None where the offsets are unknown."""
    failed: str = ""


@dataclass(frozen=True)
class CrossTokenizer:
    """``cross_tokenizer``: the teacher scores with its own tokenizer; scores are aligned back."""

    own_tokenizer: ClassVar[bool] = True  # the loader must not require the student's vocabulary

    scorer: str = "local"
    """The scorer that does the scoring, on the teacher's ids (``local``, ``sglang``, ...)."""
    options: dict = field(default_factory=dict)
    """Options of that scorer."""
    tokenizer: str = ""
    """The teacher's tokenizer directory; empty: ``teacher.path``."""
    template_kwargs: dict = field(default_factory=dict)
    """Switches for the teacher's chat template (e.g. ``enable_thinking = false``)."""
    retokenize: Literal["text", "per_token"] = "text"
    """How the teacher tokenizes the completion: ``text``, as it would write that text itself
    (its canonical tokens; spans may cross the student's); ``per_token``, each student token's
    text on its own (every student token is covered by whole teacher tokens, so the sampled-token
    loss is exact by the chain rule, at the price of tokenizations the teacher never writes)."""
    align_same: bool = False
    """Align even when the teacher's tokenizer is the student's (tests of the exactness)."""
    state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def aligns(self) -> bool:
        """True once set up against a tokenizer that is not the student's."""
        return bool(self.state) and not self.state.get("same", True)

    def not_byte_level(self) -> str:
        """Which side's tokenizer is not byte-level, so that its tokens have no bytes to project
        the teacher's entries through (``xtok_project``); "" when both are or no alignment runs."""
        if not self.aligns():
            return ""
        sides = [name for name, key in (("the student's", "student_bytes"), ("the teacher's", "teacher_bytes"))
                 if self.state.get(key) is None]
        return f"{' and '.join(sides)} tokenizer is not byte-level" if sides else ""

    # -- lifecycle -----------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        path = self.tokenizer or ctx.config.teacher.path
        if not path:
            raise ConfigError("teacher.scorer = 'cross_tokenizer' needs the teacher's tokenizer: set teacher.path "
                              "or teacher.options.tokenizer")
        self.bind(ctx, load_tokenizer(path))

    def bind(self, ctx, teacher_tok, teacher=None) -> None:
        """Set up against ``teacher_tok`` (the multi-teacher scorer binds its own teachers)."""
        s = self.state
        s.update(student_tok=ctx.tokenizer, teacher_tok=teacher_tok, teacher=teacher, counts=_zero_counts())
        try:
            check_tokenizers(ctx.tokenizer, teacher_tok)
            s["same"] = not self.align_same
        except PreflightError:
            s["same"] = False
        s["inner"] = ctx.registry.build("scorers", self.scorer, self.options, "teacher.options.scorer")
        view = TeacherView(ctx, tokenizer=teacher_tok if not s["same"] else ctx.tokenizer, teacher=teacher)
        s["view"] = view
        if hasattr(s["inner"], "setup"):
            s["inner"].setup(view)
        if s["same"]:
            return
        s["student_stops"] = set(stop_token_ids(ctx.tokenizer, ctx.student_module() if ctx.student is not None else None))
        s["student_end"] = end_of_turn_id(ctx.tokenizer)
        s["teacher_end"] = end_of_turn_id(teacher_tok)
        s["map"] = build_vocab_map(ctx.tokenizer, teacher_tok, s["student_end"], s["teacher_end"])
        s["student_bytes"] = TokenBytes(ctx.tokenizer) if is_byte_level(ctx.tokenizer) else None
        s["teacher_bytes"] = TokenBytes(teacher_tok) if is_byte_level(teacher_tok) else None
        s["teacher_byte_ids"] = single_byte_ids(teacher_tok) if s["teacher_bytes"] is not None else {}

    def metrics(self) -> dict:
        s = self.state
        if not s or s.get("same"):
            return {}
        c, s["counts"] = s["counts"], _zero_counts()
        tokens = max(c["student_tokens"], 1)
        return {
            "xtok/one_to_one": c["one_to_one"] / tokens,
            "xtok/student_covered": c["covered"] / tokens,
            "xtok/mean_chunk_tokens": c["student_tokens"] / max(c["chunks"], 1),
            "xtok/vocab_overlap": s["map"].overlap,
            "xtok/rows_skipped": float(c["rows_skipped"]),
            "xtok/ended_correction": c["ended_abs"] / max(c["chunks"], 1),
        }

    def close(self) -> None:
        inner = self.state.get("inner")
        if inner is not None and hasattr(inner, "close"):
            inner.close()

    # -- scoring ---------------------------------------------------------------------------------
    def __call__(self, ctx, batch: RolloutBatch) -> TeacherScores:
        s = self.state
        if not s:
            self.setup(ctx)
        if s["same"]:
            return s["inner"](s["view"], batch)
        if batch.turn_ids_B_L is not None:
            raise ConfigError("the cross_tokenizer scorer scores single-turn completions; multi-turn episodes need a "
                              "teacher with the student's tokenizer")
        rows = [self.render(batch, b) for b in range(batch.batch_size)]
        teacher_batch = self.teacher_batch(batch, rows)
        with torch.no_grad():
            inner = s["inner"](s["view"], teacher_batch)
        return self.back_to_student(batch, rows, teacher_batch, inner)

    def render(self, batch: RolloutBatch, b: int) -> _Row:
        """Row ``b`` in the teacher's tokens, aligned with the student's."""
        s = self.state
        s_tok, t_tok = s["student_tok"], s["teacher_tok"]
        n = int(batch.attention_mask_B_L[b].sum())
        P = int(batch.prompt_lens_B[b])
        prompt = batch.prompts[b] if batch.prompts else Prompt(prompt_ids=tuple(batch.input_ids_B_L[b, :P].tolist()))
        row = _Row(teacher_prompt=self.teacher_prompt(prompt))
        completion = batch.input_ids_B_L[b, P:n].tolist()
        stopped = bool(completion) and completion[-1] in s["student_stops"]
        body = completion[:-1] if stopped else completion
        text_bytes, s_ends = boundaries(s_tok, body, s["student_bytes"])
        if self.retokenize == "per_token":
            t_ids = self.teacher_ids(text_bytes, s_ends)
        else:
            t_ids = self.encode_bytes(text_bytes)
            if t_ids is None:
                return _failed(row, "the completion is not valid UTF-8 and the teacher's tokenizer is not byte-level")
        t_bytes, t_ends = boundaries(t_tok, t_ids, s["teacher_bytes"])
        if t_bytes != text_bytes:
            return _failed(row, "the teacher's tokenizer does not reproduce the completion's bytes")
        a = align(s_ends, t_ends)
        row.cover = covering_tokens(s_ends, t_ends, text_bytes) + (((len(t_ids), b""),) if stopped else ())
        row.teacher_completion = t_ids + ([s["teacher_end"]] if stopped else [])
        row.student_chunks = a.student_chunk_N + ((a.num_chunks,) if stopped else ())
        row.teacher_chunks = a.teacher_chunk_M + ((a.num_chunks,) if stopped else ())
        row.num_chunks = a.num_chunks + int(stopped)
        c = s["counts"]
        c["student_tokens"] += len(row.student_chunks)
        c["chunks"] += row.num_chunks
        c["one_to_one"] += a.one_to_one() + int(stopped)
        c["covered"] += a.student_covered() + int(stopped)
        return row

    def encode_bytes(self, data: bytes) -> Optional[list[int]]:
        """The teacher's ids for ``data``: its text as the teacher writes it; bytes that are not
        UTF-8 (an untrained student's, or a character cut by the budget) as the teacher's
        single-byte tokens. None when there are such bytes and the teacher has no byte tokens."""
        text = data.decode("utf-8", errors="surrogateescape")
        if not any("\udc80" <= ch <= "\udcff" for ch in text):
            return chat.encode(self.state["teacher_tok"], text) if text else []
        byte_ids = self.state.get("teacher_byte_ids")
        if not byte_ids:
            return None
        ids, run = [], []
        for ch in text:
            if "\udc80" <= ch <= "\udcff":
                if run:
                    ids += chat.encode(self.state["teacher_tok"], "".join(run))
                    run = []
                ids.append(byte_ids[ord(ch) - 0xDC00])
            else:
                run.append(ch)
        if run:
            ids += chat.encode(self.state["teacher_tok"], "".join(run))
        return ids

    def teacher_ids(self, text_bytes: bytes, student_ends: list) -> list[int]:
        """The teacher's ids for the text cut at every student boundary that falls between two
        characters (a piece is re-tokenized on its own, so no teacher token crosses a cut)."""
        ids, start = [], 0
        for end in student_ends:
            if end is None or end <= start:
                continue
            try:
                piece = text_bytes[start:end].decode("utf-8")
            except UnicodeDecodeError:  # a cut inside a character: the piece grows to the next cut
                continue
            ids += chat.encode(self.state["teacher_tok"], piece)
            start = end
        return ids

    def teacher_prompt(self, prompt: Prompt) -> list[int]:
        """The prompt in the teacher's template (its messages), or its text re-tokenized."""
        s = self.state
        messages = prompt.meta.get(MESSAGES_KEY) if prompt.meta else None
        if messages:
            chat.require_template(s["teacher_tok"], "to render the conversation for a teacher with its own tokenizer")
            return chat.chat_prompt_ids(s["teacher_tok"], messages, self.template_kwargs)
        text = s["student_tok"].decode(list(prompt.prompt_ids), skip_special_tokens=True)
        return chat.raw_prompt_ids(s["teacher_tok"], text)

    def teacher_batch(self, batch: RolloutBatch, rows: list[_Row]) -> RolloutBatch:
        """The teacher's ids as a batch its scorer can score (loss mask on the completions)."""
        seqs = [r.teacher_prompt + r.teacher_completion for r in rows]
        B, L = len(rows), max(max(len(x) for x in seqs), 1)
        ids = torch.full((B, L), pad_id_of(self.state["teacher_tok"]), dtype=torch.long)
        attn = torch.zeros(B, L, dtype=torch.long)
        loss = torch.zeros(B, L, dtype=torch.long)
        producer = torch.full((B, L), -1, dtype=torch.long)
        for b, (r, seq) in enumerate(zip(rows, seqs)):
            P, n = len(r.teacher_prompt), len(seq)
            ids[b, :n] = torch.tensor(seq, dtype=torch.long)
            attn[b, :n] = 1
            loss[b, P:n] = 1
            producer[b, :P], producer[b, P:n] = PRODUCER_PROMPT, PRODUCER_STUDENT
        prompts = tuple(Prompt(prompt_ids=tuple(r.teacher_prompt), meta=(batch.prompts[b].meta if batch.prompts else {}))
                        for b, r in enumerate(rows))
        return RolloutBatch(
            input_ids_B_L=ids, attention_mask_B_L=attn, loss_mask_B_L=loss, producer_B_L=producer,
            sampling_logprobs_B_L=torch.zeros(B, L), prompt_lens_B=torch.tensor([len(r.teacher_prompt) for r in rows]),
            prompts=prompts,
        )

    def back_to_student(self, batch: RolloutBatch, rows: list[_Row], tbatch: RolloutBatch, inner: TeacherScores) -> TeacherScores:
        """The teacher's scores on the student's positions (see the module docstring)."""
        B, L = batch.input_ids_B_L.shape
        token_lp = torch.zeros(B, L)
        groups = torch.full((B, L), -1, dtype=torch.long)
        scored = torch.zeros(B, L, dtype=torch.bool)
        dist = torch.zeros(B, L, dtype=torch.bool)
        src_b, src_s, src_t = [], [], []
        in_b, in_s, in_t = [], [], []
        t_lp = inner.token_logprobs_B_L.detach().float().cpu()
        ended = self.ended(rows, inner)
        for b, r in enumerate(rows):
            P = int(batch.prompt_lens_B[b])
            if r.failed:
                continue
            Pt = len(r.teacher_prompt)
            chunk_lp = torch.zeros(r.num_chunks).index_add(0, torch.tensor(r.teacher_chunks, dtype=torch.long),
                                                           t_lp[b, Pt:Pt + len(r.teacher_chunks)])
            if b in ended:  # the teacher's log-prob of each chunk's bytes given the text before it
                e = ended[b]
                shift = (e - torch.cat([e.new_zeros(1), e[:-1]])).float()
                chunk_lp = chunk_lp + shift
                self.state["counts"]["ended_abs"] += float(shift.abs().sum())
            s_chunks = torch.tensor(r.student_chunks, dtype=torch.long)
            per_chunk = torch.bincount(s_chunks, minlength=r.num_chunks).clamp(min=1).float()
            n = len(r.student_chunks)
            token_lp[b, P:P + n] = chunk_lp[s_chunks] / per_chunk[s_chunks]
            groups[b, P:P + n] = b * L + s_chunks
            scored[b, P:P + n] = True
            first_teacher = {}
            for k, c in enumerate(r.teacher_chunks):
                first_teacher.setdefault(c, k)
            seen = set()
            for j, c in enumerate(r.student_chunks):
                if c not in seen:
                    seen.add(c)
                    dist[b, P + j] = True
                    src_b.append(b), src_s.append(P + j), src_t.append(Pt + first_teacher[c])
                elif r.cover[j] is not None:  # inside a chunk: the covering teacher token's distribution
                    in_b.append(b), in_s.append(P + j), in_t.append(Pt + r.cover[j][0])
        token_lp = token_lp * batch.loss_mask_B_L.to(torch.float32)
        scored = scored & batch.loss_mask_B_L.bool()
        idx = (torch.tensor(src_b, dtype=torch.long), torch.tensor(src_s, dtype=torch.long), torch.tensor(src_t, dtype=torch.long))
        out = dict(token_logprobs_B_L=token_lp, token_groups_B_L=groups, scored_B_L=scored, distribution_B_L=dist,
                   vocab_map_2_M=self.state["map"].pairs_2_M(), temperature=inner.temperature,
                   scored_by_teacher=inner.scored_by_teacher)
        if inner.topk_ids_B_L_K is not None and inner.topk_logprobs_B_L_K is not None:
            # Every scored position gets the top-k of the teacher token covering its first byte
            # (chunk starts: the token starting there); ``distribution_B_L`` tells them apart.
            every = tuple(torch.cat([i, torch.tensor(j, dtype=torch.long)]) for i, j in zip(idx, (in_b, in_s, in_t)))
            K = inner.topk_ids_B_L_K.shape[-1]
            ids = torch.zeros(B, L, K, dtype=torch.long)
            lp = torch.full((B, L, K), float("-inf"))
            ids[every[0], every[1]] = inner.topk_ids_B_L_K.cpu()[every[0], every[2]]
            lp[every[0], every[1]] = inner.topk_logprobs_B_L_K.float().cpu()[every[0], every[2]]
            out.update(topk_ids_B_L_K=ids, topk_logprobs_B_L_K=lp, student_distribution=self.project(batch, rows, inner))
            if inner.tail_logmass_B_L is not None:
                tail = torch.zeros(B, L)
                tail[every[0], every[1]] = inner.tail_logmass_B_L.float().cpu()[every[0], every[2]]
                out["tail_logmass_B_L"] = tail
        if inner.is_dense:
            h = inner.hidden_B_L_H
            hidden = torch.zeros(B, L, h.shape[-1], dtype=h.dtype, device=h.device)
            dev = [i.to(h.device) for i in idx]
            hidden[dev[0], dev[1]] = h[dev[0], dev[2]]
            out.update(hidden_B_L_H=hidden, lm_head_V_H=inner.lm_head_V_H)
        self.state["counts"]["rows_skipped"] += sum(1 for r in rows if r.failed)
        return TeacherScores(**out)

    def projection(self) -> Optional[Projection]:
        """The byte-level projection between the two vocabularies (None unless both are byte-level)."""
        s = self.state
        if s["student_bytes"] is None or s["teacher_bytes"] is None:
            return None
        if "projection" not in s:
            s["projection"] = Projection(s["student_bytes"], s["teacher_bytes"], s["student_end"], s["teacher_end"],
                                         len(s["student_tok"]), encode=lambda text: chat.encode(s["student_tok"], text))
        return s["projection"]

    def ended(self, rows: list, inner: TeacherScores) -> dict:
        """Per row, per chunk, the teacher's "token ended" term (``projection.ended_corrections``);
        empty without byte-level tokenizers on both sides."""
        proj = self.projection()
        return ended_corrections(proj, rows, inner) if proj is not None else {}

    def project(self, batch: RolloutBatch, rows: list, inner: TeacherScores) -> Optional[SparseDistribution]:
        """``TeacherScores.student_distribution`` (see ``projection.student_distribution``)."""
        s = self.state
        if s["student_bytes"] is None or s["teacher_bytes"] is None or inner.topk_ids_B_L_K is None:
            return None
        return student_distribution(self.projection(), batch, rows, inner)

    # -- diagnostics -----------------------------------------------------------------------------
    def alignment_report(self, batch: RolloutBatch) -> dict:
        """Alignment statistics of ``batch`` without scoring it (``opdplug check``)."""
        s = self.state
        if s.get("same"):
            return {"teacher_tokenizer": "identical to the student's: exact path, no alignment"}
        saved, s["counts"] = s["counts"], _zero_counts()
        rows = [self.render(batch, b) for b in range(batch.batch_size)]
        s["counts"]["rows_skipped"] = sum(1 for r in rows if r.failed)
        report = {k.replace("xtok/", "alignment_"): round(v, 4) for k, v in self.metrics().items()
                  if k != "xtok/ended_correction"}  # a scoring statistic: nothing is scored here
        reasons = sorted({r.failed for r in rows if r.failed})
        if reasons:
            report["alignment_skip_reasons"] = reasons
        s["counts"] = saved
        return report


def _zero_counts() -> dict:
    return {"student_tokens": 0, "chunks": 0, "one_to_one": 0, "covered": 0, "rows_skipped": 0, "ended_abs": 0.0}


def _failed(row: _Row, why: str) -> _Row:
    row.failed = why
    return row


def vocab_map_of(scorer: CrossTokenizer) -> Optional[VocabMap]:
    """The scorer's vocabulary map (None on the same-tokenizer path)."""
    return scorer.state.get("map")
