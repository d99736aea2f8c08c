"""Update rules: direct = divergence gradient, advantage on-policy = policy gradient,
ppo_clip clips, reinforce's baseline."""
from __future__ import annotations

import pytest
import torch
from token_toys import make_toy, one_thread  # noqa: F401  (one_thread: autouse fixture)

from opdplug.types import Credit
from opdplug_token import divergences as D
from opdplug_token import estimators as E
from opdplug_token.supports import Full, Sampled, SupportResult
from opdplug_token.updates import Advantage, Direct, PPOClip, Reinforce


def params(toy):
    return (toy.student_hidden, toy.student_head)


def random_credit(toy, seed=0, with_adv=True):
    gen = torch.Generator().manual_seed(seed)
    m = toy.mask.float()
    w = (torch.rand(m.shape, generator=gen) + 0.5) * m
    adv = torch.randn(m.shape, generator=gen) * m if with_adv else None
    return Credit(weights_B_L=w, advantages_B_L=adv)


def on_policy(toy, res):
    """The batch with sampling log-probs equal to the student's current ones (ratio 1)."""
    return toy.batch.replace(sampling_logprobs_B_L=res.student_token_logprobs_B_L.detach().float())


def test_direct_gradient_is_the_weighted_divergence_gradient():
    toy = make_toy()
    scores = toy.dense_scores()
    credit = random_credit(toy)
    res = Full()(D.ReverseKL(), toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=4)
    loss, metrics = Direct()(res, toy.batch, scores, credit)
    assert metrics == {} and (loss[~toy.mask] == 0).all()
    g = torch.autograd.grad(loss.sum(), params(toy))
    m = toy.mask
    ref = (D.ReverseKL()(toy.student_logp()[m], toy.teacher_logp()[m]) * credit.weights_B_L[m]).sum()
    for a, b in zip(g, torch.autograd.grad(ref, params(toy))):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_advantage_on_policy_is_policy_gradient():
    toy = make_toy()
    scores = toy.sparse_scores(3)
    credit = random_credit(toy)
    res = Sampled()(E.K1(), toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=4)
    batch = on_policy(toy, res)
    loss, _ = Advantage()(res, batch, scores, credit)
    m = toy.mask
    # ratio is 1: the loss value is -sum w A, the gradient -sum w A grad log q
    torch.testing.assert_close(loss.sum().detach(), -(credit.weights_B_L * credit.advantages_B_L).sum().double(),
                               rtol=1e-5, atol=1e-6)
    g = torch.autograd.grad(loss.sum(), params(toy))
    logq = toy.student_logp().gather(-1, toy.batch.input_ids_B_L[..., None]).squeeze(-1)
    ref = -(credit.weights_B_L * credit.advantages_B_L * logq * m).sum()
    for a, b in zip(g, torch.autograd.grad(ref, params(toy))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="advantages"):
        Advantage()(res, batch, scores, random_credit(toy, with_adv=False))


def _result(logq_B_L, mask_B_L):
    return SupportResult(values_B_L=torch.zeros_like(logq_B_L), student_token_logprobs_B_L=logq_B_L,
                         mask_B_L=mask_B_L, metric_sums={"clamped": 2.0})


def test_ppo_clip_by_hand():
    toy = make_toy(B=1, L=6, empty_row=False)
    mask = torch.tensor([[False, True, True, True, True, False]])
    sampling = torch.tensor([[0.0, -1.0, -1.0, -1.0, -1.0, 0.0]])
    # ratios 1.5, 0.5, 1.1, 1.5 ; advantages +1, -1, +1, -1
    logq = (sampling.double() + torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1, 1.5, 1.0]], dtype=torch.float64)))
    logq = (logq * mask).requires_grad_(True)
    adv = torch.tensor([[0.0, 1.0, -1.0, 1.0, -1.0, 0.0]])
    credit = Credit(weights_B_L=mask.float(), advantages_B_L=adv)
    batch = toy.batch.replace(sampling_logprobs_B_L=sampling, loss_mask_B_L=mask.long())
    loss, metrics = PPOClip(eps=0.2)(_result(logq, mask), batch, toy.sparse_scores(2), credit)
    # token 1: min(1.5, 1.2) = 1.2 (clipped); token 2: min(-0.5, -0.8) = -0.8 (clipped);
    # token 3: 1.1 inside; token 4: min(-1.5, -1.2) = -1.5 (unclipped: pessimistic side)
    expected = -torch.tensor([[0.0, 1.2, -0.8, 1.1, -1.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.detach(), expected)
    assert metrics["clamped"] == 2.0 + 2  # the support's 2 plus two clipped tokens
    (g,) = torch.autograd.grad(loss.sum(), logq)
    assert g[0, 1] == 0 and g[0, 2] == 0  # clipped: no gradient
    torch.testing.assert_close(g[0, 3], torch.tensor(-1.1, dtype=torch.float64))
    torch.testing.assert_close(g[0, 4], torch.tensor(1.5, dtype=torch.float64))
    # on-policy with no clipping PPO equals the advantage update
    logq_on = (sampling.double() * mask).requires_grad_(True)
    a = PPOClip()(_result(logq_on, mask), batch, None, credit)[0]
    b = Advantage()(_result(logq_on, mask), batch, None, credit)[0]
    torch.testing.assert_close(a, b)


def test_reinforce_baseline_and_loss_by_hand():
    toy = make_toy(B=3, L=5, empty_row=False)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    logq = torch.tensor([[0.0, -1.0, -2.0, 0.0, 0.0], [0.0, -0.5, -0.5, -1.0, 0.0], [0.0] * 5], dtype=torch.float64)
    logq = logq.requires_grad_(True)
    teacher = torch.tensor([[0.0, -1.5, -1.0, 0.0, 0.0], [0.0, -0.5, -2.0, -0.5, 0.0], [0.0] * 5])
    scores = toy.sparse_scores(2)
    scores = type(scores)(token_logprobs_B_L=teacher, temperature=scores.temperature)
    values = torch.tensor([[0.0, 0.1, 0.2, 0.0, 0.0], [0.0, 0.3, 0.4, 0.5, 0.0], [0.0] * 5], dtype=torch.float64)
    res = SupportResult(values_B_L=values, student_token_logprobs_B_L=logq, mask_B_L=mask)
    w = mask.float() * 2.0
    credit = Credit(weights_B_L=w)
    # R_0 = (-1 + 1.5) + (-2 + 1) = -0.5 ; R_1 = 0 + 1.5 - 0.5 = 1.0 ; row 2 has no tokens:
    # baseline = mean(-0.5, 1.0) = 0.25 (not over 3 rows)
    centered = torch.tensor([-0.75, 0.75, 0.0], dtype=torch.float64)
    loss, _ = Reinforce(add_direct=False)(res, toy.batch, scores, credit)
    torch.testing.assert_close(loss.detach(), (w * centered[:, None] * logq).detach())
    (g,) = torch.autograd.grad(loss.sum(), logq)
    torch.testing.assert_close(g, (w * centered[:, None]).double())  # the cost itself is detached
    loss_direct, _ = Reinforce()(res, toy.batch, scores, credit)
    torch.testing.assert_close(loss_direct.detach(), (w * (centered[:, None] * logq + values)).detach())


def test_reinforce_single_row_has_no_policy_gradient_term():
    toy = make_toy(B=1, L=6, empty_row=False)
    scores = toy.dense_scores()
    res = Full()(D.ReverseKL(), toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=4)
    credit = Credit(weights_B_L=toy.mask.float())
    a = Reinforce()(res, toy.batch, scores, credit)[0]
    b = Direct()(res, toy.batch, scores, credit)[0]
    torch.testing.assert_close(a, b)
