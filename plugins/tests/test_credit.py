"""Credit schemes: per-token, discounted (by hand), token importance, reward + KL; the plugin."""
from __future__ import annotations

import pluggy
import pytest
import torch
from token_toys import make_toy, one_thread  # noqa: F401  (one_thread: autouse fixture)

from opdplug.hookspecs import PROJECT
from opdplug import hookspecs
from opdplug.types import TeacherScores
from opdplug_token import plugin
from opdplug_token.credit import Discounted, PerToken, RewardPlusKL, TokenImportance, discounted_cumsum


def test_per_token_advantages_and_masking():
    toy = make_toy()
    batch = toy.batch.replace(sampling_logprobs_B_L=torch.full(toy.mask.shape, -2.0))  # nonzero off-mask too
    scores = TeacherScores(token_logprobs_B_L=torch.full(toy.mask.shape, -0.5), temperature=toy.temperature)
    credit = PerToken()(batch, scores)
    m = toy.mask
    assert torch.equal(credit.weights_B_L, m.float())
    assert (credit.advantages_B_L[m] == 1.5).all() and (credit.advantages_B_L[~m] == 0).all()
    assert credit.advantages_B_L.dtype == torch.float32 and not credit.advantages_B_L.requires_grad


def test_discounted_cumsum_by_hand():
    x = torch.tensor([[9.0, 1.0, 2.0, 9.0, 3.0, 9.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]])
    out = discounted_cumsum(x, mask, 0.5)
    # row 0: unmasked positions neither contribute nor count as a step:
    #   A4 = 3, A2 = 2 + 0.5 * 3 = 3.5, A1 = 1 + 0.5 * 3.5 = 2.75
    # row 1: A3 = 1, A2 = 1.5, A1 = 1.75, A0 = 1.875
    expected = torch.tensor([[0.0, 2.75, 3.5, 0.0, 3.0, 0.0], [1.875, 1.75, 1.5, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(discounted_cumsum(x, mask, 0.0), x * mask)


def test_discounted_scheme_uses_per_token_advantages():
    toy = make_toy()
    scores = toy.sparse_scores(2)
    base = PerToken()(toy.batch, scores)
    disc = Discounted(gamma=0.9)(toy.batch, scores)
    torch.testing.assert_close(disc.advantages_B_L, discounted_cumsum(base.advantages_B_L, toy.mask, 0.9))
    torch.testing.assert_close(Discounted(gamma=0.0)(toy.batch, scores).advantages_B_L, base.advantages_B_L)
    # gamma = 1: the first trained token of a row carries the row's whole summed advantage
    full = Discounted(gamma=1.0)(toy.batch, scores).advantages_B_L
    first = toy.mask.float().argmax(-1)
    torch.testing.assert_close(full[0, first[0]], base.advantages_B_L[0].sum())
    with pytest.raises(ValueError):
        Discounted(gamma=1.5)


def test_token_importance_weights():
    toy = make_toy(B=1, L=6, empty_row=False)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    # tokens 2..5: (teacher conf, student prob) = (0.9, 0.1), (0.9, 0.9), (0.2, 0.1), (0.5, 0.5)
    teacher = torch.log(torch.tensor([[1.0, 1.0, 0.9, 0.9, 0.2, 0.5]]))
    sampling = torch.log(torch.tensor([[1.0, 1.0, 0.1, 0.9, 0.1, 0.5]]))
    batch = toy.batch.replace(loss_mask_B_L=mask, sampling_logprobs_B_L=sampling)
    scores = TeacherScores(token_logprobs_B_L=teacher, temperature=toy.temperature)
    w = TokenImportance(strength=2.0)(batch, scores).weights_B_L
    raw = torch.tensor([1 + 2 * 0.9 * 0.9, 1 + 2 * 0.9 * 0.1, 1 + 2 * 0.2 * 0.9, 1 + 2 * 0.5 * 0.5])
    torch.testing.assert_close(w[0, 2:], raw / raw.mean())
    assert (w[0, :2] == 0).all() and abs(float(w[0, 2:].mean()) - 1) < 1e-6
    assert w[0, 2] == w[0].max()  # teacher sure, student confused: the largest weight
    torch.testing.assert_close(TokenImportance(strength=0.0)(batch, scores).weights_B_L, mask.float())
    # with top-k present, the teacher's confidence is its top-1 probability
    topk = torch.log(torch.tensor([[[1.0], [1.0], [0.2], [0.9], [0.9], [0.5]]]))
    scores_k = TeacherScores(token_logprobs_B_L=teacher, topk_ids_B_L_K=torch.zeros(1, 6, 1, dtype=torch.long),
                             topk_logprobs_B_L_K=topk, temperature=toy.temperature)
    w_k = TokenImportance(strength=2.0)(batch, scores_k).weights_B_L
    raw_k = torch.tensor([1 + 2 * 0.2 * 0.9, 1 + 2 * 0.9 * 0.1, 1 + 2 * 0.9 * 0.9, 1 + 2 * 0.5 * 0.5])
    torch.testing.assert_close(w_k[0, 2:], raw_k / raw_k.mean())


def test_reward_plus_kl():
    toy = make_toy()
    scores = toy.sparse_scores(2)
    rewards = torch.tensor([1.0, 0.0, 0.5])
    batch = toy.batch.replace(rewards_B=rewards)
    base = PerToken()(batch, scores).advantages_B_L
    adv = RewardPlusKL(reward_scale=3.0)(batch, scores).advantages_B_L
    m = toy.mask.float()
    torch.testing.assert_close(adv, base + 3.0 * (rewards - 0.5)[:, None] * m)
    assert (adv[~toy.mask] == 0).all()
    with pytest.raises(ValueError, match="reward"):
        RewardPlusKL()(toy.batch.replace(rewards_B=None), scores)


def test_plugin_registers_every_name_as_a_class():
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin)
    expected = {
        "opd_register_divergences": {"forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl",
                                     "alpha", "akl", "todi", "entropy_aware"},
        "opd_register_estimators": {"k1", "k2", "k3", "nll"},
        "opd_register_supports": {"sampled", "student_topk", "teacher_topk", "full"},
        "opd_register_updates": {"direct", "reinforce", "advantage", "ppo_clip"},
        "opd_register_credit_schemes": {"per_token", "discounted", "token_importance", "reward_plus_kl",
                                        "grpo", "grpo_teacher_kl", "grpo_teacher_shaping"},
    }
    for hook, names in expected.items():
        got = {}
        getattr(pm.hook, hook)(register=lambda n, obj, **_: got.__setitem__(n, obj))
        assert set(got) == names, hook
        for obj in got.values():
            assert isinstance(obj, type)
            obj()  # every option has a default
    est = {}
    pm.hook.opd_register_estimators(register=lambda n, obj: est.__setitem__(n, obj))
    assert est["k3"].claims == "forward_kl" and est["k2"].claims == "reverse_kl"
