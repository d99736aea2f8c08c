"""Cross-tokenizer scoring checked against the same-tokenizer path: with one tokenizer it gives
the same per-token loss and gradients for every support; with a teacher whose tokenizer is the
student's minus some merges, the sampled-token loss is the exact chain-rule one."""
from __future__ import annotations

import pytest
import torch

from opdplug.config import parse_config
from opdplug.manager import make_plugin_manager
from opdplug.prepare import setup, teardown
from opdplug.types import PRODUCER_STUDENT

from crosstok_toys import config_data, drop_last_merges, make_pair

transformers = pytest.importorskip("transformers")


@pytest.fixture
def context(tmp_path):
    made = []

    def make(teacher_tok=None, **options):
        student, teacher, data = make_pair(tmp_path, teacher_tok)
        manager = make_plugin_manager()
        cfg = config_data(tmp_path, student, teacher, data, teacher={"options": options})
        ctx = setup(parse_config(cfg, manager.plugin_tables()), manager)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        teardown(ctx)


TEXTS = ["The answer is 8.", "Tom has 3 apples and buys 5 more.", "What is 4 plus 9? 13", "step by step, politely",
         "def add(a, b): return a + b", "Ünïcödé 🙂 and 42"]


def text_batch(ctx, seed=0, pieces=False):
    """Completions written from text by the student's tokenizer, EOS-terminated; with ``pieces``
    each word is tokenized on its own (ids a tokenizer would not write for the whole text)."""
    from opdplug_local.models import collate, pad_id_of

    tok = ctx.tokenizer
    prompts = ctx.task.prompts(len(TEXTS), seed=seed, split="train")
    rows = []
    for text in TEXTS:
        if pieces:
            words = text.split(" ")
            ids = [i for k, w in enumerate(words) for i in tok((" " if k else "") + w, add_special_tokens=False)["input_ids"]]
        else:
            ids = tok(text, add_special_tokens=False)["input_ids"]
        rows.append(ids + [tok.eos_token_id])
    return collate(prompts, rows, producer=PRODUCER_STUDENT, pad_id=pad_id_of(tok), on_policy=True)


def scorer_of(ctx):
    opts = ctx.config.teacher
    return ctx.component("scorers", opts.scorer, opts.options, "teacher.scorer")


def loss_and_grads(ctx, support_name, fn_kind, fn_name, batch, scores):
    """Per-token values of one support and the gradients they give the student."""
    support = ctx.registry.build("supports", support_name, {}, "loss.support")
    fn = ctx.registry.build(fn_kind, fn_name, {}, "loss.fn")
    student = ctx.manager.hook.opd_student_forward(ctx=ctx, batch=batch)
    mask = batch.loss_mask_B_L.bool()
    result = support(fn, student, scores, batch, mask, top_k=8, chunk_size=7)
    params = [p for p in ctx.student_module().parameters() if p.requires_grad]
    grads = torch.autograd.grad(result.values_B_L.sum(), params, allow_unused=True)
    return result.values_B_L.detach(), [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


PAIRS = [
    (("sampled", "estimators", "k2"), ("sampled", "estimators", "k2")),
    (("sampled", "estimators", "k3"), ("sampled", "estimators", "k3")),
    (("teacher_topk", "divergences", "reverse_kl"), ("xtok_topk", "divergences", "reverse_kl")),
    (("teacher_topk", "divergences", "forward_kl"), ("xtok_topk", "divergences", "forward_kl")),
    (("full", "divergences", "reverse_kl"), ("xtok_full", "divergences", "reverse_kl")),
    (("full", "divergences", "jsd"), ("xtok_full", "divergences", "jsd")),
    (("teacher_topk", "divergences", "reverse_kl"), ("xtok_project", "divergences", "reverse_kl")),
    (("teacher_topk", "divergences", "forward_kl"), ("xtok_project", "divergences", "forward_kl")),
]


@pytest.mark.parametrize("retokenize", ["per_token", "text"])
def test_one_tokenizer_gives_the_same_loss_and_gradients_for_every_support(context, retokenize):
    from opdplug_local.scorers import LocalScorer

    ctx = context(align_same=True, retokenize=retokenize)
    # per_token scores any ids exactly; text re-tokenizes, so it matches on the ids a tokenizer writes
    batch = text_batch(ctx, pieces=retokenize == "per_token")
    with torch.no_grad():
        same = LocalScorer()(ctx, batch)
        cross = scorer_of(ctx)(ctx, batch)
    assert cross.vocab_map_2_M is not None and cross.token_groups_B_L is not None  # the aligned path ran
    mask = batch.loss_mask_B_L.bool()
    assert bool(cross.scored_B_L[mask].all()) and bool(cross.distribution_B_L[mask].all())
    torch.testing.assert_close(cross.token_logprobs_B_L, same.token_logprobs_B_L, atol=1e-6, rtol=0)
    for plain, xtok in PAIRS:
        v0, g0 = loss_and_grads(ctx, *plain, batch, same)
        v1, g1 = loss_and_grads(ctx, *xtok, batch, cross)
        torch.testing.assert_close(v1, v0, atol=1e-6, rtol=0, msg=lambda m: f"{plain} vs {xtok}: {m}")
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m: f"{plain} vs {xtok} grads: {m}")
    assert scorer_of(ctx).metrics()["xtok/one_to_one"] == 1.0


def test_a_teacher_with_fewer_merges_scores_each_student_token_exactly(context, tmp_path):
    from opdplug.testing.models import build_bpe_tokenizer
    from crosstok_toys import CORPUS

    coarse = build_bpe_tokenizer(CORPUS, vocab_size=420, template="chatml")
    ctx = context(teacher_tok=drop_last_merges(coarse, 120))
    batch = text_batch(ctx, seed=1)
    scorer = scorer_of(ctx)
    with torch.no_grad():
        cross = scorer(ctx, batch)
    mask = batch.loss_mask_B_L.bool()
    groups = cross.token_groups_B_L[mask]
    assert groups.unique().numel() == groups.numel()  # every student token is a chunk of its own
    m = scorer.metrics()
    assert m["xtok/student_covered"] == 1.0 and m["xtok/one_to_one"] < 1.0  # some split into several teacher tokens
    # The chain rule, by hand: the teacher's ids for each student token's text, scored in context.
    teacher_tok = scorer.state["teacher_tok"]
    for b in range(batch.batch_size):
        if not TEXTS[b].isascii():  # one token's text alone is not decodable inside a character
            continue
        P, n = int(batch.prompt_lens_B[b]), int(batch.attention_mask_B_L[b].sum())
        prompt_t = scorer.teacher_prompt(batch.prompts[b])
        seq, owner = list(prompt_t), []
        for j, tid in enumerate(batch.input_ids_B_L[b, P:n].tolist()):
            piece = [scorer.state["teacher_end"]] if tid == ctx.tokenizer.eos_token_id else \
                teacher_tok(ctx.tokenizer.decode([tid]), add_special_tokens=False)["input_ids"]
            seq += piece
            owner += [j] * len(piece)
        with torch.no_grad():
            logits = ctx.teacher(torch.tensor([seq])).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0][len(prompt_t) - 1:]
        expected = torch.zeros(n - P).index_add(0, torch.tensor(owner), lp)
        torch.testing.assert_close(cross.token_logprobs_B_L[b, P:n], expected, atol=1e-4, rtol=1e-4)
    # so the sampled-token loss (k2) is the per-token one on those exact log-probs
    v, _ = loss_and_grads(ctx, "sampled", "estimators", "k2", batch, cross)
    student = ctx.manager.hook.opd_student_forward(ctx=ctx, batch=batch)
    logq = torch.log_softmax(student.hidden_B_L_H @ student.lm_head_V_H.T, -1).gather(-1, batch.input_ids_B_L[..., None])[..., 0]
    ref = 0.5 * (logq - cross.token_logprobs_B_L) ** 2
    torch.testing.assert_close(v[mask], ref.detach()[mask], atol=1e-5, rtol=1e-5)
