"""The FLOP count every compute comparison uses (demo, compute_claim, route_table)."""
import pytest

from opdplug_local.demo import flops_of_run

HISTORY = [{"rollout/sequence_tokens_total": 100.0}, {"rollout/sequence_tokens_total": 50.0}]


def test_each_route_counts_what_it_ran():
    s, t = 10, 40
    # on-policy distillation: the student generates (2s), the teacher scores (2t), the student trains (6s)
    assert flops_of_run(HISTORY, s, t, "student") == 150 * (2 * s + 2 * t + 6 * s)
    # RL from a verifier: no teacher
    assert flops_of_run(HISTORY, s, t, "student", teacher_scores=False) == 150 * (2 * s + 6 * s)
    # SFT on teacher samples: the teacher generates, nobody scores
    assert flops_of_run(HISTORY, s, t, "teacher") == 150 * (2 * t + 6 * s)
    # SFT on reference answers: only the update
    assert flops_of_run(HISTORY, s, t, "reference") == 150 * 6 * s
    with pytest.raises(ValueError, match="generator"):
        flops_of_run(HISTORY, s, t, "nobody")
