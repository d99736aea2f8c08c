"""Privileged-context teacher, outcome verifier with reward + KL, and the degenerate filter."""
import torch

from opdplug_local.models import collate, score_with_model
from opdplug.types import PRODUCER_STUDENT, Prompt
from opdplug_token.filters import FilterOptions, degenerate_rows, repeat_fraction
from opdplug_token.teachers import PrivilegedContext


def test_privileged_scores_align_with_a_teacher_that_sees_the_context(tiny_models):
    from opdplug_local.models import load_model

    model = load_model(str(tiny_models.teacher_dir), "t")
    tok = tiny_models.tokenizer
    ctx_ids = tok("; 7", add_special_tokens=False)["input_ids"]
    prompts = [Prompt(prompt_ids=tuple(tok("a 3 =")["input_ids"]), privileged_ids=tuple(ctx_ids))]
    completion = tok("a 3 ; 3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = collate(prompts, [completion], producer=PRODUCER_STUDENT, pad_id=tok.pad_token_id)

    class Ctx:
        tokenizer = tok
        teacher = model
        config = type("C", (), {"rollout": type("R", (), {"temperature": 1.0}), "teacher": type("T", (), {"top_k": 0}),
                                 "loss": type("L", (), {"chunk_size": 8})})

    scores = PrivilegedContext()(Ctx, batch)
    # the same teacher fed BOS + context + prompt + completion directly
    full = [tok.bos_token_id] + ctx_ids + list(prompts[0].prompt_ids[1:]) + completion
    direct = collate([Prompt(prompt_ids=tuple(full[: len(full) - len(completion)]))], [completion], producer=PRODUCER_STUDENT, pad_id=tok.pad_token_id)
    expected = score_with_model(model, direct, temperature=1.0, top_k=0)
    got = scores.token_logprobs_B_L[batch.loss_mask_B_L.bool()]
    want = expected.token_logprobs_B_L[direct.loss_mask_B_L.bool()]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # and it differs from the unprivileged view
    plain = score_with_model(model, batch, temperature=1.0, top_k=0).token_logprobs_B_L[batch.loss_mask_B_L.bool()]
    assert not torch.allclose(plain, got)


def test_self_distillation_with_privileged_context_runs(short_run):
    result = short_run(teacher={"scorer": "privileged_context", "options": {"model": "student"}})
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in result.history)


def test_reward_plus_kl_uses_the_verifier(short_run):
    result = short_run(
        credit={"scheme": "reward_plus_kl", "verifier": "task", "options": {"reward_scale": 2.0}},
        loss={"support": "sampled", "estimator": "k1", "update": "advantage"},
    )
    assert all("rollout/reward" in m for m in result.history)


def test_repetition_and_truncation_filter():
    assert repeat_fraction([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) > 0.5
    assert repeat_fraction([1, 2, 3, 4, 5], 3) == 0.0
    prompts = [Prompt(prompt_ids=(1, 2)), Prompt(prompt_ids=(1, 2)), Prompt(prompt_ids=(1, 2))]
    batch = collate(prompts, [[5, 6, 5, 6, 5, 6, 5, 6], [5, 6, 7, 8], [9, 9]], producer=PRODUCER_STUDENT, pad_id=0,
                    truncated=[False, False, True])
    drop = degenerate_rows(batch, FilterOptions(enabled=True, max_repeat_fraction=0.3, ngram=2, drop_truncated=True))
    assert drop.tolist() == [True, False, True]


def test_filter_wraps_rollout_and_logs_fraction(short_run):
    result = short_run(token={"filter": {"enabled": True, "max_teacher_ppl": 1.0001}})
    # an untrained teacher has perplexity far above 1: every row is filtered, nothing is trained
    assert all(m["filter/fraction"] == 1.0 for m in result.history)
    assert all(m["tokens"] == 0 for m in result.history)
