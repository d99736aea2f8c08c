"""Estimators: the EXPECTED pathwise gradient, by exact enumeration of a small vocabulary, must
equal the gradient of the divergence each estimator claims (the k2/k3 trap)."""
from __future__ import annotations

import pytest
import torch
from token_toys import one_thread  # noqa: F401  (autouse fixture)

from opdplug_token import divergences as D
from opdplug_token import estimators as E

V = 7
DIVERGENCES = {"reverse_kl": D.ReverseKL(), "forward_kl": D.ForwardKL()}


def logits(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=gen, dtype=torch.float64) * 1.5, torch.randn(V, generator=gen, dtype=torch.float64) * 1.5


def expected_pathwise(est, z, t):
    """(E_x[grad_z est(x)], E_x[est(x)]) with x ~ the estimator's sampler, enumerated exactly."""
    logp = torch.log_softmax(t, -1)
    sampler_probs = (torch.softmax(z, -1) if est.sampler == "student" else logp.exp()).detach()
    grad = torch.zeros_like(z)
    value = torch.zeros(())
    for x in range(V):
        zz = z.clone().requires_grad_(True)
        v = est(torch.log_softmax(zz, -1)[x : x + 1], logp[x : x + 1])
        (g,) = torch.autograd.grad(v.sum(), zz)
        grad += sampler_probs[x] * g
        value = value + sampler_probs[x] * v.detach().sum()
    return grad, value


def divergence_grad(name, z, t):
    zz = z.clone().requires_grad_(True)
    v = DIVERGENCES[name](torch.log_softmax(zz, -1), torch.log_softmax(t, -1))
    (g,) = torch.autograd.grad(v.sum(), zz)
    return g, v.detach().sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("est", [E.K2(), E.K3(), E.NLL()], ids=["k2", "k3", "nll"])
def test_expected_gradient_matches_claimed_divergence(est, seed):
    z, t = logits(seed)
    g_est, _ = expected_pathwise(est, z, t)
    g_div, _ = divergence_grad(est.claims, z, t)
    torch.testing.assert_close(g_est, g_div, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k3_trap_value_is_reverse_kl_but_gradient_is_not(seed):
    z, t = logits(seed)
    g_k3, v_k3 = expected_pathwise(E.K3(), z, t)
    g_rkl, v_rkl = divergence_grad("reverse_kl", z, t)
    torch.testing.assert_close(v_k3, v_rkl)  # the value is an unbiased reverse-KL estimate...
    assert (g_k3 - g_rkl).abs().max() > 1e-2  # ...but its gradient is not the reverse-KL one
    assert E.K3.claims == "forward_kl" and E.K3.sampler == "student"


@pytest.mark.parametrize("seed", [0, 1])
def test_k1_value_unbiased_gradient_zero(seed):
    z, t = logits(seed)
    g_k1, v_k1 = expected_pathwise(E.K1(), z, t)
    _, v_rkl = divergence_grad("reverse_kl", z, t)
    torch.testing.assert_close(v_k1, v_rkl)
    torch.testing.assert_close(g_k1, torch.zeros_like(g_k1), atol=1e-12, rtol=0)
    assert E.K1.claims is None


def test_k2_value_is_not_reverse_kl_but_its_gradient_is():
    z, t = logits(3)
    g_k2, v_k2 = expected_pathwise(E.K2(), z, t)
    g_rkl, v_rkl = divergence_grad("reverse_kl", z, t)
    torch.testing.assert_close(g_k2, g_rkl)
    assert abs(float(v_k2 - v_rkl)) > 1e-3


def test_declared_samplers_and_claims():
    assert (E.K2.claims, E.K2.sampler) == ("reverse_kl", "student")
    assert (E.NLL.claims, E.NLL.sampler) == ("forward_kl", "teacher")


def test_values_by_formula_and_dtype():
    lq = torch.tensor([-0.5, -2.0, -1.0e-3])
    lp = torch.tensor([-1.5, -0.2, -1.0e-3])
    d = lq.double() - lp.double()
    torch.testing.assert_close(E.K1()(lq, lp), d.float())
    torch.testing.assert_close(E.K2()(lq, lp), (0.5 * d * d).float())
    torch.testing.assert_close(E.K3()(lq, lp), ((lp.double() - lq.double()).exp() - 1 + d).float())
    torch.testing.assert_close(E.NLL()(lq, lp), -lq)
    # k3 is exact for tiny log-ratios (no (1 + tiny) - 1 cancellation) and never negative
    tiny = torch.tensor([1e-5], dtype=torch.float32)
    torch.testing.assert_close(E.K3()(tiny, torch.zeros(1)), torch.tensor([0.5e-10]), rtol=1e-3, atol=0)
    for est in (E.K1(), E.K2(), E.K3(), E.NLL()):
        assert est(lq.bfloat16(), lp.bfloat16()).dtype == torch.bfloat16
