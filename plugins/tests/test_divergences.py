"""Every divergence against a naive float64 formula on probabilities: values and gradients."""
from __future__ import annotations

import math

import pytest
import torch
from token_toys import one_thread  # noqa: F401  (autouse fixture)

from opdplug_token import divergences as D
from opdplug_token.metrics import LOG_FLOOR

NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def float64_default():
    """Exact references: float64 everywhere in this module (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ----------------------------------------------------------------------------- naive references
def xlogy_ratio(a, b):
    """sum a log(a / b) with 0 log 0 = 0 (torch.xlogy)."""
    return (torch.xlogy(a, a) - torch.xlogy(a, b)).sum(-1)


def ref_fkl(q, p):
    return xlogy_ratio(p, q)


def ref_rkl(q, p):
    return xlogy_ratio(q, p)


def ref_jsd(beta):
    def f(q, p):
        m = beta * p + (1 - beta) * q
        return beta * xlogy_ratio(p, m) + (1 - beta) * xlogy_ratio(q, m)
    return f


def ref_tvd(q, p):
    return 0.5 * (p - q).abs().sum(-1)


def ref_skew(alpha):
    return lambda q, p: xlogy_ratio(p, alpha * p + (1 - alpha) * q)


def ref_skew_rev(alpha):
    return lambda q, p: xlogy_ratio(q, (1 - alpha) * p + alpha * q)


def ref_alpha(a):
    return lambda q, p: (1 - (p**a * q ** (1 - a)).sum(-1)) / (a * (1 - a))


def ref_akl(mu):
    def f(q, p):
        out = []
        for qi, pi in zip(q, p):
            order = sorted(range(len(pi)), key=lambda i: -float(pi[i]))
            head, cum = set(), 0.0
            for i in order:  # teacher's top tokens until cumulative mass reaches mu
                if cum >= mu:
                    break
                head.add(i)
                cum += float(pi[i])
            gap = (pi - qi).abs().detach()
            gh = sum(gap[i] for i in head)
            gt = gap.sum() - gh
            wh = gh / (gh + gt)
            out.append(wh * ref_fkl(qi, pi) + (1 - wh) * ref_rkl(qi, pi))
        return torch.stack(out)
    return f


def ref_todi(beta):
    def f(q, p):
        a = torch.sigmoid(beta * (p.log() - q.log())).detach()
        return (a * p * (p.log() - q.log()) + (1 - a) * q * (q.log() - p.log())).sum(-1)
    return f


def ref_entropy_aware(q, p):
    h = (-(p * p.log()).sum(-1) / math.log(p.shape[-1])).detach()
    return (1 - h) * ref_rkl(q, p) + h * ref_fkl(q, p)


CASES = [
    ("forward_kl", D.ForwardKL(), ref_fkl),
    ("reverse_kl", D.ReverseKL(), ref_rkl),
    ("jsd_0.3", D.GeneralizedJSD(beta=0.3), ref_jsd(0.3)),
    ("jsd_0.5", D.GeneralizedJSD(beta=0.5), ref_jsd(0.5)),
    ("tvd", D.TVD(), ref_tvd),
    ("skew_kl", D.SkewKL(alpha=0.1), ref_skew(0.1)),
    ("skew_kl_0.4", D.SkewKL(alpha=0.4), ref_skew(0.4)),
    ("skew_reverse_kl", D.SkewReverseKL(alpha=0.1), ref_skew_rev(0.1)),
    ("skew_reverse_kl_0.4", D.SkewReverseKL(alpha=0.4), ref_skew_rev(0.4)),
    ("alpha_0.5", D.AlphaDivergence(alpha=0.5), ref_alpha(0.5)),
    ("alpha_0.2", D.AlphaDivergence(alpha=0.2), ref_alpha(0.2)),
    ("akl", D.AKL(mu=0.5), ref_akl(0.5)),
    ("akl_0.8", D.AKL(mu=0.8), ref_akl(0.8)),
    ("todi", D.ToDi(beta=1.0), ref_todi(1.0)),
    ("todi_2", D.ToDi(beta=2.0), ref_todi(2.0)),
    ("entropy_aware", D.EntropyAware(), ref_entropy_aware),
]
IDS = [c[0] for c in CASES]


def value_and_grad(fn, z, t, *, on_logits: bool):
    """fn's value and the gradient of sum(value * weights) w.r.t. student logits z."""
    z = z.clone().requires_grad_(True)
    if on_logits:
        v = fn(torch.log_softmax(z, -1), torch.log_softmax(t, -1))
    else:
        v = fn(torch.softmax(z, -1), torch.softmax(t, -1))
    w = torch.linspace(0.5, 1.5, v.numel()).reshape(v.shape)
    (g,) = torch.autograd.grad((v * w).sum(), z)
    return v.detach(), g


@pytest.mark.parametrize("name,div,ref", CASES, ids=IDS)
def test_value_and_gradient_match_naive_reference(name, div, ref):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 9, generator=gen) * 2
    t = torch.randn(6, 9, generator=gen) * 2
    v, g = value_and_grad(div, z, t, on_logits=True)
    v_ref, g_ref = value_and_grad(ref, z, t, on_logits=False)
    assert v.dtype == torch.float64
    torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)
    assert (v >= -1e-12).all()


@pytest.mark.parametrize("name,div,ref", CASES, ids=IDS)
def test_zero_when_equal(name, div, ref):
    z = torch.randn(4, 7)
    v, g = value_and_grad(div, z, z, on_logits=True)
    torch.testing.assert_close(v, torch.zeros(4), atol=1e-12, rtol=0)
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name,div,ref", CASES, ids=IDS)
def test_padding_columns_are_ignored(name, div, ref):
    """-inf logits on both sides (vocabulary padding): same value and gradient as without them,
    zero gradient on the padded columns."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, 6, generator=gen)
    t = torch.randn(5, 6, generator=gen)
    pad = torch.full((5, 3), NEG_INF)
    v_pad, g_pad = value_and_grad(div, torch.cat([z, pad], -1), torch.cat([t, pad], -1), on_logits=True)
    v, g = value_and_grad(div, z, t, on_logits=True)
    torch.testing.assert_close(v_pad, v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_pad[:, :6], g, rtol=1e-10, atol=1e-12)
    assert (g_pad[:, 6:] == 0).all()


# Values on disjoint supports: teacher mass on {0, 1}, student mass on {2, 3}, -inf elsewhere.
DISJOINT_EXPECTED = {
    "jsd_0.5": math.log(2),
    "jsd_0.3": -(0.3 * math.log(0.3) + 0.7 * math.log(0.7)),  # binary entropy of beta
    "skew_kl_0.4": -math.log(0.4),
    "skew_reverse_kl_0.4": -math.log(0.4),
    "tvd": 1.0,
    "skew_kl": math.log(10),  # -log(alpha)
    "skew_reverse_kl": math.log(10),
    "alpha_0.5": 4.0,
    "alpha_0.2": 1 / (0.2 * 0.8),
}


@pytest.mark.parametrize("name,div,ref", CASES, ids=IDS)
def test_disjoint_supports_finite_no_nan(name, div, ref):
    z = torch.tensor([[NEG_INF, NEG_INF, 0.3, -0.2, NEG_INF]])
    t = torch.tensor([[0.5, -0.1, NEG_INF, NEG_INF, NEG_INF]])
    v, g = value_and_grad(div, z, t, on_logits=True)
    assert torch.isfinite(v).all() and torch.isfinite(g).all(), (v, g)
    if name in DISJOINT_EXPECTED:  # bounded divergences keep their exact value
        torch.testing.assert_close(v, torch.tensor([DISJOINT_EXPECTED[name]]), rtol=1e-10, atol=1e-12)
    else:  # the KL-type ones: a large finite penalty (~ -LOG_FLOOR per unit of mismatched mass)
        assert v.item() > 0.5 * -LOG_FLOOR


def test_disjoint_forward_kl_documented_value_and_exact_gradient():
    """FKL where the student has no mass: p (log p - LOG_FLOOR), and the exact gradient q - p."""
    z = torch.tensor([[NEG_INF, NEG_INF, 0.3, -0.2, NEG_INF]])
    t = torch.tensor([[0.5, -0.1, NEG_INF, NEG_INF, NEG_INF]])
    v, g = value_and_grad(D.ForwardKL(), z, t, on_logits=True)
    p = torch.softmax(t, -1)
    expected = (p[:, :2] * (p[:, :2].log() - LOG_FLOOR)).sum(-1)
    torch.testing.assert_close(v, expected)
    # value_and_grad weighs its single row by 0.5
    torch.testing.assert_close(g, 0.5 * (torch.softmax(z, -1) - p))


def test_one_hot_teacher():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(3, 6, generator=gen)
    t = torch.full((3, 6), NEG_INF)
    t[:, 0] = 0.0
    for name, div, ref in CASES:
        v, g = value_and_grad(div, z, t, on_logits=True)
        assert torch.isfinite(v).all() and torch.isfinite(g).all(), name
        if name in {"forward_kl", "jsd_0.3", "jsd_0.5", "tvd", "skew_kl", "skew_kl_0.4", "skew_reverse_kl",
                    "skew_reverse_kl_0.4", "alpha_0.5", "alpha_0.2"}:
            # finite mathematically: matches the naive formula exactly
            v_ref, g_ref = value_and_grad(ref, z, t, on_logits=False)
            torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)
    q = torch.softmax(z, -1)
    # FKL with a one-hot teacher is the NLL of its token
    torch.testing.assert_close(D.ForwardKL()(z.log_softmax(-1), t), -z.log_softmax(-1)[:, 0])
    # RKL: infinite mathematically; the teacher's zero entries count as log p = LOG_FLOOR
    expected = (q * z.log_softmax(-1)).sum(-1) - (q[:, 1:] * LOG_FLOOR).sum(-1)
    torch.testing.assert_close(D.ReverseKL()(z.log_softmax(-1), t), expected)
    # entropy-aware: h = 0 for a one-hot teacher, i.e. exactly reverse KL
    torch.testing.assert_close(D.EntropyAware()(z.log_softmax(-1), t), D.ReverseKL()(z.log_softmax(-1), t))


def test_jsd_endpoints_are_the_kls_exactly():
    z, t = torch.randn(4, 8), torch.randn(4, 8)
    lq, lp = z.log_softmax(-1), t.log_softmax(-1)
    assert torch.equal(D.GeneralizedJSD(beta=0.0)(lq, lp), D.ForwardKL()(lq, lp))
    assert torch.equal(D.GeneralizedJSD(beta=1.0)(lq, lp), D.ReverseKL()(lq, lp))
    torch.testing.assert_close(D.ForwardKL()(lq, lp), ref_fkl(z.softmax(-1), t.softmax(-1)))
    torch.testing.assert_close(D.ReverseKL()(lq, lp), ref_rkl(z.softmax(-1), t.softmax(-1)))
    # skew endpoints, alpha endpoints
    assert torch.equal(D.SkewKL(alpha=0.0)(lq, lp), D.ForwardKL()(lq, lp))
    assert torch.equal(D.SkewReverseKL(alpha=0.0)(lq, lp), D.ReverseKL()(lq, lp))
    assert torch.equal(D.AlphaDivergence(alpha=1.0)(lq, lp), D.ForwardKL()(lq, lp))
    assert torch.equal(D.AlphaDivergence(alpha=0.0)(lq, lp), D.ReverseKL()(lq, lp))


def test_alpha_divergence_limits():
    """alpha -> 1 is forward KL(p||q), alpha -> 0 is reverse KL(q||p) (continuity)."""
    z, t = torch.randn(4, 8), torch.randn(4, 8)
    lq, lp = z.log_softmax(-1), t.log_softmax(-1)
    torch.testing.assert_close(D.AlphaDivergence(alpha=1 - 1e-6)(lq, lp), D.ForwardKL()(lq, lp), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(D.AlphaDivergence(alpha=1e-6)(lq, lp), D.ReverseKL()(lq, lp), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(D.ForwardKL()(lq, lp), D.ReverseKL()(lq, lp), rtol=1e-2)
    with pytest.raises(ValueError):
        D.AlphaDivergence(alpha=1.5)


def test_akl_head_tail_by_hand():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]])
    q = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    lq, lp = q.log(), p.log()
    fkl, rkl = D.ForwardKL()(lq, lp), D.ReverseKL()(lq, lp)
    # row 0: head {0} (0.6 >= 0.5): g_head 0.4, g_tail 0.4. Row 1: head {0, 1}: g_head 0.55, g_tail 0.05
    expected = torch.stack([0.5 * fkl[0] + 0.5 * rkl[0], 0.55 / 0.6 * fkl[1] + 0.05 / 0.6 * rkl[1]])
    torch.testing.assert_close(D.AKL()(lq, lp), expected)


def test_entropy_aware_uniform_teacher_is_forward_kl_even_with_padding():
    z = torch.cat([torch.randn(2, 5), torch.full((2, 2), NEG_INF)], -1)
    t = torch.cat([torch.zeros(2, 5), torch.full((2, 2), NEG_INF)], -1)
    lq, lp = z.log_softmax(-1), t.log_softmax(-1)
    torch.testing.assert_close(D.EntropyAware()(lq, lp), D.ForwardKL()(lq, lp))


def test_low_precision_inputs_computed_in_float32():
    z, t = torch.randn(4, 50, dtype=torch.float32), torch.randn(4, 50, dtype=torch.float32)
    for name, div, _ in CASES:
        v32 = div(z.log_softmax(-1), t.log_softmax(-1))
        v16 = div(z.log_softmax(-1).bfloat16(), t.log_softmax(-1).bfloat16())
        assert v16.dtype == torch.bfloat16 and v32.dtype == torch.float32, name
        torch.testing.assert_close(v16.float(), v32, rtol=0.1, atol=0.02)


def test_leading_dimensions_and_shape_check():
    z, t = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    v = D.GeneralizedJSD()(z.log_softmax(-1), t.log_softmax(-1))
    assert v.shape == (2, 3)
    with pytest.raises(ValueError):
        D.ForwardKL()(z.log_softmax(-1), t[..., :5].log_softmax(-1))
