"""Group-relative credit (GRPO and its teacher hybrids) against float64 references written with
Python loops over plain floats, straight from the formulas in ``opdplug_token.group_credit``."""
from __future__ import annotations

import math

import pytest
import torch
from token_toys import make_toy, one_thread  # noqa: F401  (one_thread: autouse fixture)

from opdplug.types import Prompt
from opdplug_token.group_credit import GRPO, GRPOTeacherKL, GRPOTeacherShaping, group_advantages

GROUPS = [0, 0, 0, 1, 1, 1, 2, 3]
"""Rows 0-2 one group, 3-5 another, 6 a group of one, 7 a row with a group of one too."""
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5]


def reference_outcome(rewards, groups, normalize_std, eps):
    """Per-row GRPO advantage in float64: (r - mean) / (unbiased std + eps), 0 for groups of one."""
    out = []
    for b, g in enumerate(groups):
        members = [rewards[i] for i, h in enumerate(groups) if h == g]
        if g < 0 or len(members) < 2:
            out.append(0.0)
            continue
        mean = sum(members) / len(members)
        std = math.sqrt(sum((r - mean) ** 2 for r in members) / (len(members) - 1))
        out.append((rewards[b] - mean) / (std + eps) if normalize_std else rewards[b] - mean)
    return out


def grouped_toy(seed=0):
    """The token toy with 8 rows, prompts carrying ``GROUPS`` and rewards ``REWARDS``; the teacher
    scores are dense (so log p differs from the sampler's log q on every trained token)."""
    toy = make_toy(B=len(GROUPS), L=9, seed=seed)
    prompts = tuple(Prompt(prompt_ids=(1, 2), row=i, group=g) for i, g in enumerate(GROUPS))
    batch = toy.batch.replace(prompts=prompts, rewards_B=torch.tensor(REWARDS))
    return toy, batch, toy.dense_scores()


def as_lists(batch, scores):
    mask = batch.loss_mask_B_L.tolist()
    q = batch.sampling_logprobs_B_L.double().tolist()
    p = scores.token_logprobs_B_L.double().tolist()
    return mask, q, p


@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_matches_the_float64_reference(normalize_std):
    toy, batch, scores = grouped_toy()
    credit = GRPO(normalize_std=normalize_std, eps=1e-4)(batch, scores)
    per_row = reference_outcome(REWARDS, GROUPS, normalize_std, 1e-4)
    mask, _, _ = as_lists(batch, scores)
    expected = torch.tensor([[per_row[b] * m for m in mask[b]] for b in range(len(GROUPS))], dtype=torch.float64)
    torch.testing.assert_close(credit.advantages_B_L.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(credit.weights_B_L, batch.loss_mask_B_L.float())
    assert credit.advantages_B_L.dtype == torch.float32 and not credit.advantages_B_L.requires_grad
    # the two-member-different-reward group: with std, +-0.577; the all-zero group: 0
    assert per_row[3:6] == [0.0, 0.0, 0.0] and per_row[6] == 0.0 and per_row[7] == 0.0
    if normalize_std:
        assert abs(per_row[0] - (1 / 3) / math.sqrt(1 / 3)) < 1e-3


def test_grpo_teacher_kl_matches_the_float64_reference():
    toy, batch, scores = grouped_toy(seed=1)
    beta = 0.3
    credit = GRPOTeacherKL(beta=beta, normalize_std=True)(batch, scores)
    per_row = reference_outcome(REWARDS, GROUPS, True, 1e-4)
    mask, q, p = as_lists(batch, scores)
    expected = []
    for b in range(len(GROUPS)):
        row = []
        for t in range(len(mask[b])):
            kl_to_go = sum(q[b][s] - p[b][s] for s in range(t, len(mask[b])) if mask[b][s])
            row.append((per_row[b] - beta * kl_to_go) if mask[b][t] else 0.0)
        expected.append(row)
    torch.testing.assert_close(credit.advantages_B_L.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    assert credit.metrics["teacher_kl_to_go"] != 0.0
    # beta = 0 is plain GRPO
    torch.testing.assert_close(GRPOTeacherKL(beta=0.0)(batch, scores).advantages_B_L, GRPO()(batch, scores).advantages_B_L)


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_grpo_teacher_shaping_matches_the_float64_reference(weight):
    toy, batch, scores = grouped_toy(seed=2)
    credit = GRPOTeacherShaping(weight=weight, normalize_std=False)(batch, scores)
    per_row = reference_outcome(REWARDS, GROUPS, False, 1e-4)
    mask, q, p = as_lists(batch, scores)
    expected = [[(per_row[b] + weight * (p[b][t] - q[b][t])) if mask[b][t] else 0.0 for t in range(len(mask[b]))]
                for b in range(len(GROUPS))]
    torch.testing.assert_close(credit.advantages_B_L.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)


def test_groups_do_not_mix_and_rows_without_a_group_get_zero():
    rewards = torch.tensor([1.0, 0.0, 5.0, 7.0, 3.0])
    groups = torch.tensor([4, 4, -1, 9, 9])
    adv = group_advantages(rewards, groups, normalize_std=False, eps=1e-4)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 2.0, -2.0]))
    # permuting rows permutes advantages (no dependence on position or on other groups)
    perm = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(group_advantages(rewards[perm], groups[perm], True, 1e-4),
                               group_advantages(rewards, groups, True, 1e-4)[perm])


def test_schemes_need_rewards_and_valid_options():
    toy, batch, scores = grouped_toy()
    for scheme in (GRPO(), GRPOTeacherKL(), GRPOTeacherShaping()):
        with pytest.raises(ValueError, match="credit.verifier"):
            scheme(batch.replace(rewards_B=None), scores)
    with pytest.raises(ValueError, match="beta"):
        GRPOTeacherKL(beta=-1.0)
    with pytest.raises(ValueError, match="weight"):
        GRPOTeacherShaping(weight=-0.1)
    with pytest.raises(ValueError, match="eps"):
        GRPO(eps=0.0)
