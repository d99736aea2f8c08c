"""``xtok_project`` where the student's text is a prefix of a word the teacher writes whole.

A teacher with a " abc" token (built from " a" and "bc", so it has no " ab") and a student that
writes every byte on its own. On the student's " ab", the teacher's own tokens of that text are
" a", "b": a path it never takes, after which its next-token distributions mean nothing (here: it
says "end the word"). What the teacher says of the next bytes is at the position before " a": its
" abc". The projection must take it from there, two teacher tokens back; taking only the last
token's position (one back), as it did, taught the bench's student to stop words halfway ("alp
bravo" for "alpha bravo") and its accuracy went from 0.07 to 0.10 against a 0.98 teacher.
"""
from __future__ import annotations

import math

import pytest
import torch

from test_crosstok_ended import TableTeacher, toy_tokenizer

from opdplug.types import PRODUCER_STUDENT, Prompt

TEXTS = {" abc.": 0.6, " ax.": 0.4}
TEACHER = [("Ġ", "a"), ("b", "c"), ("Ġa", "bc"), ("Ġa", "x")]
STUDENT: list = []  # bytes only


class GarbageAfterUnseen(TableTeacher):
    """``TableTeacher`` over ``TEXTS``; after a prefix it never writes it says "." (0.9) or "x"."""

    def __init__(self, tok, dense: bool):
        self.tok, self.dense = tok, dense
        self.end = tok.convert_tokens_to_ids("<|eot_id|>")
        self.seqs = {tuple(tok(t, add_special_tokens=False)["input_ids"]) + (self.end,): p for t, p in TEXTS.items()}

    def next_logp(self, prefix: tuple) -> dict[int, float]:
        if any(seq[:len(prefix)] == prefix and len(seq) > len(prefix) for seq in self.seqs):
            return super().next_logp(prefix)
        dot, x = self.tok.convert_tokens_to_ids("."), self.tok.convert_tokens_to_ids("x")
        return {dot: math.log(0.9), x: math.log(0.1)}


def projected(text: str):
    """The ``cross_tokenizer`` scorer's projection on the student's byte-by-byte ``text``: per
    completion position, {student token: probability} normalised with the tail."""
    from types import SimpleNamespace

    from opdplug_local.models import collate
    from opdplug_token.crosstok.scorer import CrossTokenizer

    student_tok, teacher_tok = toy_tokenizer(STUDENT, "chatml"), toy_tokenizer(TEACHER, "llama3")
    inner = GarbageAfterUnseen(teacher_tok, dense=False)
    ctx = SimpleNamespace(tokenizer=student_tok, student=None, teacher=None, config=None,
                          registry=SimpleNamespace(build=lambda *a: inner))
    scorer = CrossTokenizer()
    scorer.bind(ctx, teacher_tok)
    eos = student_tok.convert_tokens_to_ids("<|im_end|>")
    prompt = Prompt(prompt_ids=tuple(student_tok("Q:", add_special_tokens=False)["input_ids"]))
    ids = student_tok(text, add_special_tokens=False)["input_ids"] + [eos]
    batch = collate([prompt], [ids], producer=PRODUCER_STUDENT, pad_id=eos, on_policy=True)
    dist = scorer(ctx, batch).student_distribution
    P = int(batch.prompt_lens_B[0])
    out = []
    for j in range(len(ids)):
        mass = {}
        for i, lp in zip(dist.ids_B_L_J[0, P + j].tolist(), dist.logmass_B_L_J[0, P + j].tolist()):
            if i >= 0 and lp > -math.inf:
                tok = student_tok.convert_ids_to_tokens(i)
                mass[tok] = mass.get(tok, 0.0) + math.exp(lp)
        total = sum(mass.values()) + math.exp(float(dist.tail_logmass_B_L[0, P + j]))
        out.append({t: m / total for t, m in mass.items()})
    return student_tok.convert_ids_to_tokens(ids), out


def test_the_student_byte_by_byte_gets_the_teachers_whole_word():
    tokens, dist = projected(" abc.")
    assert tokens[:5] == ["Ġ", "a", "b", "c", "."]
    assert dist[0] == pytest.approx({"Ġ": 1.0}, abs=1e-6)
    assert dist[2] == pytest.approx({"b": 0.6, "x": 0.4}, abs=1e-6)  # after " a": " abc" or " ax"
    assert dist[3] == pytest.approx({"c": 1.0}, abs=1e-6)  # inside " abc"
    assert dist[4] == pytest.approx({".": 1.0}, abs=1e-6)


def test_after_a_prefix_the_teacher_splits_oddly_the_word_goes_on():
    tokens, dist = projected(" ab.")  # the teacher's tokens of " ab" are " a", "b": it never writes those
    assert tokens[:4] == ["Ġ", "a", "b", "."]
    assert dist[2] == pytest.approx({"b": 0.6, "x": 0.4}, abs=1e-6)
    # After " ab" only " abc" goes on, from the position before " a": "c", not the "." that the
    # teacher's distribution after its odd "b" says.
    assert dist[3].get("c", 0.0) == pytest.approx(1.0, abs=1e-6)
    assert dist[3].get(".", 0.0) < 1e-6
