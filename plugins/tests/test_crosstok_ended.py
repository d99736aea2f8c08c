"""The sampled-token loss across tokenizers when a teacher token's end carries information.

A teacher with a " 32" token and a student that writes " 32" as " 3", "2". On the student's
" 3", "." the chunks are " 3" and ".", and the teacher's log-prob of its token " 3" is that of
the number being exactly 3 (its " 32" is another token), while the student's log-prob of " 3"
leaves the number open. Scored raw, the chunk " 3" is too unlikely and the chunk "." after it
(the teacher is sure the number ended) too likely: at the teacher's own distribution the
expected per-chunk k2 gradient pushes the student to end numbers after one digit (what the
cross-family bench showed: accuracy 0.38 -> 0.01). The scorer adds the "token ended" term, so
that each chunk's score is the teacher's log-prob of its bytes given the text before it.

Enumerated over every completion of a toy language (float64; the scores are float32): the chunk scores add up to the
teacher's text-prefix log-probs at every chunk end, and the expected gradient of the per-chunk
k2 loss (the ``sampled`` support's, through autograd) equals the exact one computed from the
teacher's text distribution, which is zero at the teacher's own distribution. Both for a teacher
that sends its top-k and for a dense one.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from opdplug.types import PRODUCER_STUDENT, Prompt, StudentOutputs, TeacherScores

transformers = pytest.importorskip("transformers")

TEXTS = {" 3.": 0.1, " 32.": 0.6, " 4.": 0.2, " 42.": 0.1}
"""The teacher's distribution over completions (each followed by its end of turn)."""


def toy_tokenizer(merges: list[tuple[str, str]], template: str):
    """A byte-level BPE tokenizer with exactly these merges, the template's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from opdplug.testing.models import TEMPLATES

    jinja, specials, end_of_turn, bos = TEMPLATES[template]
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    kwargs = dict(eos_token=end_of_turn, clean_up_tokenization_spaces=False)
    if bos:
        kwargs["bos_token"] = bos
    out = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    out.chat_template = jinja
    return out


STUDENT = [("Ġ", "3"), ("Ġ", "4")]
TEACHER = STUDENT + [("Ġ3", "2"), ("Ġ4", "2")]


class TableTeacher:
    """A teacher language model given by a table: its next-token distribution after a prefix of
    its canonical tokens, from ``TEXTS``; scores as a sparse top-k (all of its support) or dense
    (one-hot hidden states, the log-prob table as the output projection)."""

    def __init__(self, tok, dense: bool):
        self.tok, self.dense = tok, dense
        self.end = tok.convert_tokens_to_ids("<|eot_id|>")
        self.seqs = {tuple(tok(t, add_special_tokens=False)["input_ids"]) + (self.end,): p for t, p in TEXTS.items()}

    def next_logp(self, prefix: tuple) -> dict[int, float]:
        mass: dict[int, float] = {}
        for seq, p in self.seqs.items():
            if seq[:len(prefix)] == prefix and len(seq) > len(prefix):
                mass[seq[len(prefix)]] = mass.get(seq[len(prefix)], 0.0) + p
        total = sum(mass.values())
        return {t: math.log(m / total) for t, m in mass.items()}

    def __call__(self, ctx, batch) -> TeacherScores:
        B, L = batch.input_ids_B_L.shape
        V, K = len(self.tok), 4
        token = torch.zeros(B, L, dtype=torch.float64)
        ids = torch.zeros(B, L, K, dtype=torch.long)
        lps = torch.full((B, L, K), float("-inf"), dtype=torch.float64)
        table = torch.full((B * L, V), -1000.0, dtype=torch.float64)  # dense: one row per position
        for b in range(B):
            P, n = int(batch.prompt_lens_B[b]), int(batch.attention_mask_B_L[b].sum())
            seq = tuple(batch.input_ids_B_L[b, P:n].tolist())
            for j in range(len(seq)):
                dist = self.next_logp(seq[:j])
                token[b, P + j] = dist.get(seq[j], float("-inf"))
                for k, (t, lp) in enumerate(sorted(dist.items(), key=lambda x: -x[1])):
                    ids[b, P + j, k], lps[b, P + j, k] = t, lp
                for t, lp in dist.items():
                    table[b * L + P + j, t] = lp
        if self.dense:
            return TeacherScores(token_logprobs_B_L=token, hidden_B_L_H=torch.eye(B * L, dtype=torch.float64).view(B, L, B * L),
                                 lm_head_V_H=table.T.contiguous())
        return TeacherScores(token_logprobs_B_L=token, topk_ids_B_L_K=ids, topk_logprobs_B_L_K=lps)


def cross_scorer(dense: bool):
    """The ``cross_tokenizer`` scorer bound to the toy tokenizers, wrapping ``TableTeacher``."""
    from opdplug_token.crosstok.scorer import CrossTokenizer

    student_tok, teacher_tok = toy_tokenizer(STUDENT, "chatml"), toy_tokenizer(TEACHER, "llama3")
    inner = TableTeacher(teacher_tok, dense)
    ctx = SimpleNamespace(tokenizer=student_tok, student=None, teacher=None, config=None,
                          registry=SimpleNamespace(build=lambda *a: inner))
    scorer = CrossTokenizer()
    scorer.bind(ctx, teacher_tok)
    return scorer, ctx, student_tok


def student_rows(student_tok):
    """Every completion, as the student's ids (EOS-terminated), in a batch; and its probability."""
    from opdplug_local.models import collate

    eos = student_tok.convert_tokens_to_ids("<|im_end|>")
    prompt = Prompt(prompt_ids=tuple(student_tok("Q:", add_special_tokens=False)["input_ids"]))
    rows = [student_tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in TEXTS]
    batch = collate([prompt] * len(rows), rows, producer=PRODUCER_STUDENT, pad_id=eos, on_policy=True)
    return batch, rows


def text_prefix_logp(text: str) -> float:
    """log of the teacher's probability that a completion begins with ``text``."""
    return math.log(sum(p for t, p in TEXTS.items() if t.startswith(text)))


@pytest.mark.parametrize("dense", [False, True])
def test_chunk_scores_add_up_to_the_teachers_text_prefix_logprobs(dense):
    scorer, ctx, tok = cross_scorer(dense)
    batch, rows = student_rows(tok)
    scores = scorer(ctx, batch)
    P = int(batch.prompt_lens_B[0])
    for b, (text, ids) in enumerate(zip(TEXTS, rows)):
        groups = scores.token_groups_B_L[b, P:P + len(ids)].tolist()
        lps = scores.token_logprobs_B_L[b, P:P + len(ids)].double()
        written = b""
        for j, t in enumerate(ids[:-1]):  # the student's tokens before its end of turn
            written += tok.convert_tokens_to_string([tok.convert_ids_to_tokens(t)]).encode()
            if groups[j] != groups[j + 1]:  # a chunk ends here: the cumulative score is log P(prefix)
                assert float(lps[:j + 1].sum()) == pytest.approx(text_prefix_logp(written.decode()), abs=1e-6), (text, j)
        assert float(lps.sum()) == pytest.approx(math.log(TEXTS[text]), abs=1e-6)  # the whole completion
    assert scorer.metrics()["xtok/ended_correction"] > 0


def student_policy(tok, theta: dict[str, float]):
    """A student whose only free choices are the first token (" 3" or " 4") and, after it, "2" or
    ".": logits per context as a parameter ``W`` [V, contexts], one-hot hidden states. Every
    other step is forced (log-prob 0)."""
    V = len(tok)
    tid = tok.convert_tokens_to_ids
    contexts = {"start": 0, "after_3": 1, "after_4": 2, "after_2": 3, "after_dot": 4}
    W = torch.full((V, len(contexts)), -1000.0, dtype=torch.float64)
    W[tid("Ġ3"), 0], W[tid("Ġ4"), 0] = theta["3"], 0.0
    W[tid("2"), 1], W[tid("."), 1] = theta["2|3"], 0.0
    W[tid("2"), 2], W[tid("."), 2] = theta["2|4"], 0.0
    W[tid("."), 3] = 0.0
    W[tid("<|im_end|>"), 4] = 0.0
    return W.requires_grad_(True), contexts


def k2_gradient(scorer, ctx, tok, theta, *, reference: bool) -> torch.Tensor:
    """E over the student's completions of the gradient of its per-chunk k2 loss: through the
    ``sampled`` support on the scorer's scores, or (``reference``) computed directly from the
    teacher's text distribution, chunk by chunk (log q of the chunk minus the teacher's log-prob
    of the chunk's bytes given the text before)."""
    from opdplug_token.estimators import K2
    from opdplug_token.supports import Sampled

    batch, rows = student_rows(tok)
    scores = scorer(ctx, batch)
    W, contexts = student_policy(tok, theta)
    B, L = batch.input_ids_B_L.shape
    P = int(batch.prompt_lens_B[0])
    hidden = torch.zeros(B, L, len(contexts), dtype=torch.float64)
    for b, ids in enumerate(rows):
        names = ["start", "after_3" if ids[0] == tok.convert_tokens_to_ids("Ġ3") else "after_4"]
        names += (["after_2"] if len(ids) == 4 else []) + ["after_dot"]
        for j, name in enumerate(names):
            hidden[b, P + j, contexts[name]] = 1.0
    logq_B_L = torch.log_softmax(hidden @ W.T, dim=-1).gather(-1, batch.input_ids_B_L[..., None]).squeeze(-1)
    q_B = torch.where(batch.loss_mask_B_L.bool(), logq_B_L, 0.0).sum(-1).exp().detach()  # P(completion)
    if reference:
        loss = torch.zeros((), dtype=torch.float64)
        for b, (text, ids) in enumerate(zip(TEXTS, rows)):
            groups = scores.token_groups_B_L[b, P:P + len(ids)].tolist()
            before, logq = "", torch.zeros((), dtype=torch.float64)
            for j in range(len(ids)):
                logq = logq + logq_B_L[b, P + j]
                if j + 1 < len(ids) and groups[j] == groups[j + 1]:
                    continue  # the chunk goes on
                if j + 1 < len(ids):
                    written = tok.decode(ids[:j + 1])
                    logp = text_prefix_logp(written) - text_prefix_logp(before)
                else:  # the end of turn: the completion is over
                    written, logp = text, math.log(TEXTS[text]) - text_prefix_logp(before)
                loss = loss + q_B[b] * 0.5 * (logq - logp) ** 2
                before, logq = written, torch.zeros((), dtype=torch.float64)
    else:
        student = StudentOutputs(hidden_B_L_H=hidden, lm_head_V_H=W)
        result = Sampled()(K2(), student, scores, batch, batch.loss_mask_B_L.bool(), chunk_size=64)
        loss = (q_B[:, None] * result.values_B_L).sum()
    (grad,) = torch.autograd.grad(loss, W)
    return grad


@pytest.mark.parametrize("dense", [False, True])
def test_expected_per_chunk_k2_gradient_is_exact_and_zero_at_the_teacher(dense):
    scorer, ctx, tok = cross_scorer(dense)
    # The teacher's own text distribution: " 3" 0.7 (then "2" 6/7), " 4" 0.3 (then "2" 1/3).
    at_teacher = {"3": math.log(0.7 / 0.3), "2|3": math.log(6.0), "2|4": math.log(0.5)}
    g = k2_gradient(scorer, ctx, tok, at_teacher, reference=False)
    assert g.abs().max() < 1e-6, "the teacher's own distribution must be a fixed point of per-chunk k2"
    for theta in ({"3": 0.0, "2|3": 0.0, "2|4": 0.0}, {"3": 1.5, "2|3": -0.5, "2|4": 2.0}):
        got = k2_gradient(scorer, ctx, tok, theta, reference=False)
        want = k2_gradient(scorer, ctx, tok, theta, reference=True)
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)  # the scores are float32
