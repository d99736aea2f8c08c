"""Samplers: GKD's lambda, the off-policy cold start and the schedule."""
import pytest

from opdplug_token import samplers
from opdplug_token.samplers import LambdaMix
from opdplug.types import PRODUCER_STUDENT, PRODUCER_TEACHER


def test_schedule():
    mix = LambdaMix(lmbda=0.8, cold_start_steps=3, ramp_steps=4)
    assert [mix.lambda_at(s) for s in range(3)] == [0.0, 0.0, 0.0]
    assert mix.lambda_at(3) == pytest.approx(0.2) and mix.lambda_at(6) == pytest.approx(0.8)
    assert mix.lambda_at(100) == pytest.approx(0.8)


def test_lambda_zero_never_calls_the_student_sampler(short_run, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the student sampled with lambda = 0")

    monkeypatch.setattr(samplers, "student_rollout", forbidden)
    result = short_run(rollout={"sampler": "lambda_mix", "options": {"lmbda": 0.0, "off_policy": "reference"}},
                       loss={"support": "sampled", "estimator": "nll"}, teacher={"scorer": "none"})
    assert all(m["rollout/on_policy"] == 0.0 for m in result.history)


def test_lambda_one_never_uses_reference_completions(short_run, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("reference completions used with lambda = 1")

    monkeypatch.setattr(samplers, "reference_rollout", forbidden)
    monkeypatch.setattr(samplers, "teacher_rollout", forbidden)
    result = short_run(rollout={"sampler": "lambda_mix", "options": {"lmbda": 1.0, "off_policy": "reference"}})
    assert all(m["rollout/on_policy"] == 1.0 for m in result.history)


def test_mixed_batch_keeps_rows_in_prompt_order(short_run, monkeypatch):
    seen = []
    original = samplers.LambdaMix.__call__

    def spy(self, ctx, prompts, step):
        batch = original(self, ctx, prompts, step)
        seen.append((prompts, batch))
        return batch

    monkeypatch.setattr(samplers.LambdaMix, "__call__", spy)
    short_run(rollout={"sampler": "lambda_mix", "options": {"lmbda": 0.5, "off_policy": "teacher"}}, run={"batch_size": 6})
    for prompts, batch in seen:
        assert int(batch.on_policy_B.sum()) == 3
        for i, p in enumerate(prompts):
            P = len(p.prompt_ids)
            assert batch.input_ids_B_L[i, :P].tolist() == list(p.prompt_ids)
            producer = int(batch.producer_B_L[i, P])
            assert producer == (PRODUCER_STUDENT if batch.on_policy_B[i] else PRODUCER_TEACHER)
            assert (batch.sampling_logprobs_B_L[i][batch.loss_mask_B_L[i].bool()] < 0).all()
