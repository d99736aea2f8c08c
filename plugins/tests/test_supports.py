"""Supports: chunked full vocabulary vs an unchunked reference, top-k + tail buckets by hand,
the sampled support, diagnostics, and a memory check that [B, L, V] is never created."""
from __future__ import annotations

import math

import pytest
import torch
from token_toys import make_toy, one_thread  # noqa: F401  (one_thread: autouse fixture)
from torch.utils._python_dispatch import TorchDispatchMode

from opdplug.types import TeacherScores
from opdplug_token import divergences as D
from opdplug_token import estimators as E
from opdplug_token.supports import Full, Sampled, StudentTopK, SupportResult, TeacherTopK


def grads(result: SupportResult, toy, weights_B_L):
    """Gradients of sum(w * values) w.r.t. student hidden and lm_head."""
    return torch.autograd.grad((result.values_B_L * weights_B_L).sum(), (toy.student_hidden, toy.student_head))


def ref_grads(values_N, toy, weights_B_L):
    return torch.autograd.grad((values_N * weights_B_L[toy.mask]).sum(), (toy.student_hidden, toy.student_head))


def weights(toy):
    return torch.rand(toy.mask.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5


def hand_tail(logp_N_K):
    """log(1 - sum exp) in float64, by hand."""
    return torch.log1p(-logp_N_K.exp().sum(-1))


# ----------------------------------------------------------------------------- full
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
@pytest.mark.parametrize("div", [D.ReverseKL(), D.GeneralizedJSD(beta=0.3), D.AKL()], ids=["rkl", "jsd", "akl"])
def test_full_chunked_equals_unchunked(chunk_size, div):
    toy = make_toy(temperature=0.7)
    scores = toy.dense_scores()
    res = Full()(div, toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=chunk_size)
    m = toy.mask
    ref_N = div(toy.student_logp()[m], toy.teacher_logp()[m])
    w = weights(toy)
    assert res.values_B_L.shape == m.shape
    torch.testing.assert_close(res.values_B_L[m], ref_N, rtol=1e-10, atol=1e-12)
    assert (res.values_B_L[~m] == 0).all() and (res.student_token_logprobs_B_L[~m] == 0).all()
    tok_ref = toy.student_logp().gather(-1, toy.batch.input_ids_B_L[..., None]).squeeze(-1)[m]
    torch.testing.assert_close(res.student_token_logprobs_B_L[m], tok_ref)
    for g, g_ref in zip(grads(res, toy, w), ref_grads(ref_N, toy, w)):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_full_temperature_is_applied_to_both_sides():
    """Values at T = 2 differ from T = 1 and equal the reference at T = 2 (both divided)."""
    toy1, toy2 = make_toy(temperature=1.0), make_toy(temperature=2.0)
    v1 = Full()(D.ForwardKL(), toy1.student(), toy1.dense_scores(), toy1.batch, toy1.mask, top_k=3, chunk_size=4)
    v2 = Full()(D.ForwardKL(), toy2.student(), toy2.dense_scores(), toy2.batch, toy2.mask, top_k=3, chunk_size=4)
    m = toy2.mask
    ref = D.ForwardKL()(torch.log_softmax(toy2.student_hidden @ toy2.student_head.T / 2, -1)[m],
                        torch.log_softmax(toy2.teacher_hidden @ toy2.teacher_head.T / 2, -1)[m])
    torch.testing.assert_close(v2.values_B_L[m], ref)
    assert not torch.allclose(v1.values_B_L[m], v2.values_B_L[m])


def test_no_gradient_into_teacher_and_temperature_mismatch_rejected():
    toy = make_toy()
    toy.teacher_hidden.requires_grad_(True)
    toy.teacher_head.requires_grad_(True)
    res = Full()(D.ReverseKL(), toy.student(), toy.dense_scores(), toy.batch, toy.mask, top_k=3, chunk_size=4)
    res.values_B_L.sum().backward()
    assert toy.teacher_hidden.grad is None and toy.teacher_head.grad is None
    assert toy.student_head.grad is not None
    bad = TeacherScores(token_logprobs_B_L=torch.zeros(toy.mask.shape), hidden_B_L_H=toy.teacher_hidden,
                        lm_head_V_H=toy.teacher_head, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        Full()(D.ReverseKL(), toy.student(), bad, toy.batch, toy.mask, top_k=3, chunk_size=4)
    with pytest.raises(ValueError, match="dense"):
        Full()(D.ReverseKL(), toy.student(), toy.sparse_scores(3), toy.batch, toy.mask, top_k=3, chunk_size=4)


def test_full_metrics_are_exact_token_sums():
    toy = make_toy()
    res = Full()(D.ReverseKL(), toy.student(), toy.dense_scores(), toy.batch, toy.mask, top_k=3, chunk_size=4)
    m = toy.mask
    lq, lp = toy.student_logp()[m].detach(), toy.teacher_logp()[m]
    ms = res.metric_sums
    assert math.isclose(ms["reverse_kl"], float(D.ReverseKL()(lq, lp).sum()), rel_tol=1e-9)
    assert math.isclose(ms["forward_kl"], float(D.ForwardKL()(lq, lp).sum()), rel_tol=1e-9)
    assert math.isclose(ms["student_entropy"], float(-(lq.exp() * lq).sum()), rel_tol=1e-9)
    assert math.isclose(ms["teacher_entropy"], float(-(lp.exp() * lp).sum()), rel_tol=1e-9)
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) / 3 for a, b in zip(lq.topk(3).indices, lp.topk(3).indices))
    assert math.isclose(ms["topk_overlap"], overlap, rel_tol=1e-9)
    assert ms["tail_mass"] == 0.0 and ms["clamped"] == 0.0


def test_different_vocab_sizes_are_padded():
    """A teacher lm_head with extra (padding) rows: the student side gets -inf columns."""
    toy = make_toy()
    extra = torch.randn(3, toy.teacher_head.shape[1], dtype=torch.float64)
    scores = TeacherScores(token_logprobs_B_L=torch.zeros(toy.mask.shape), hidden_B_L_H=toy.teacher_hidden,
                           lm_head_V_H=torch.cat([toy.teacher_head, extra]), temperature=toy.temperature)
    res = Full()(D.GeneralizedJSD(), toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=4)
    assert torch.isfinite(res.values_B_L).all()
    grads(res, toy, torch.ones(toy.mask.shape, dtype=torch.float64))


# ----------------------------------------------------------------------------- memory
class _Largest(TorchDispatchMode):
    """Records the largest tensor any op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def _measure(fn):
    """(largest tensor created in forward + backward, elements kept alive for backward)."""
    storages = {}

    def pack(x):
        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes() // x.element_size()
        return x

    mode = _Largest()
    with mode:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss = fn()
        loss.backward()
    return mode.largest, sum(storages.values())


def test_full_support_memory_does_not_scale_with_tokens_times_vocab():
    V, chunk = 3000, 8
    toy = make_toy(B=2, L=64, H=4, Ht=4, V=V, dtype=torch.float32, empty_row=False)
    scores = toy.dense_scores()  # built outside the measurement (it holds [B, L, V] itself)
    N = int(toy.mask.sum())

    def chunked():
        res = Full()(D.ReverseKL(), toy.student(), scores, toy.batch, toy.mask, top_k=4, chunk_size=chunk)
        return res.values_B_L.sum()

    def naive():
        return D.ReverseKL()(toy.student_logp()[toy.mask], toy.teacher_logp()[toy.mask]).sum()

    largest, kept = _measure(chunked)
    largest_naive, kept_naive = _measure(naive)
    assert largest_naive >= N * V and kept_naive >= N * V  # the probes do see [N, V] tensors
    assert largest <= chunk * V  # nothing bigger than one chunk's logits, forward or backward
    assert kept < N * V / 10  # checkpointing: no chunk's [chunk, V] activations are kept for backward
    for sup in (TeacherTopK(), StudentTopK()):
        largest, kept = _measure(lambda: sup(D.ReverseKL(), toy.student(), scores, toy.batch, toy.mask,
                                             top_k=4, chunk_size=chunk).values_B_L.sum())
        assert largest <= chunk * V and kept < N * V / 10


# ----------------------------------------------------------------------------- teacher top-k
def _hand_teacher_topk(toy, k, ids_N_K=None):
    """(K+1)-outcome distributions built by hand, float64: student and teacher."""
    m = toy.mask
    lq, lp = toy.student_logp()[m], toy.teacher_logp()[m]
    if ids_N_K is None:
        ids_N_K = lp.topk(k).indices
    s_K, t_K = lq.gather(-1, ids_N_K), lp.gather(-1, ids_N_K)
    s = torch.cat([s_K, hand_tail(s_K)[:, None]], -1)
    t = torch.cat([t_K, hand_tail(t_K)[:, None]], -1)
    return s, t


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
@pytest.mark.parametrize("div", [D.ForwardKL(), D.ReverseKL(), D.TVD()], ids=["fkl", "rkl", "tvd"])
def test_teacher_topk_equals_hand_built_tail_distribution(dense, div):
    toy, k = make_toy(), 4
    scores = toy.dense_scores() if dense else toy.sparse_scores(k)
    res = TeacherTopK()(div, toy.student(), scores, toy.batch, toy.mask, top_k=k, chunk_size=3)
    s, t = _hand_teacher_topk(toy, k)
    ref_N = div(s, t)
    torch.testing.assert_close(res.values_B_L[toy.mask], ref_N, rtol=1e-7, atol=1e-9)
    w = weights(toy)
    for g, g_ref in zip(grads(res, toy, w), ref_grads(ref_N, toy, w)):
        torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)
    tail_ref = float(t[:, -1].exp().sum())
    assert math.isclose(res.metric_sums["tail_mass"], tail_ref, rel_tol=1e-6)
    assert res.metric_sums["clamped"] == 0


def test_teacher_topk_sparse_truncates_wider_scores_and_recomputes_tail():
    toy = make_toy()
    res = TeacherTopK()(D.ForwardKL(), toy.student(), toy.sparse_scores(6), toy.batch, toy.mask, top_k=3, chunk_size=5)
    s, t = _hand_teacher_topk(toy, 3)
    torch.testing.assert_close(res.values_B_L[toy.mask], D.ForwardKL()(s, t), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("div", [D.ForwardKL(), D.ReverseKL(), D.GeneralizedJSD(beta=0.7), D.EntropyAware(), D.ToDi()],
                         ids=["fkl", "rkl", "jsd", "entropy_aware", "todi"])
def test_teacher_topk_with_k_equal_v_is_the_full_support(div):
    toy = make_toy()
    V = toy.student_head.shape[0]
    scores = toy.dense_scores()
    full = Full()(div, toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=4)
    topk = TeacherTopK()(div, toy.student(), scores, toy.batch, toy.mask, top_k=V, chunk_size=4)
    torch.testing.assert_close(topk.values_B_L, full.values_B_L, rtol=1e-9, atol=1e-11)
    w = weights(toy)
    for a, b in zip(grads(topk, toy, w), grads(full, toy, w)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_teacher_topk_tail_clamp_is_counted():
    """Sparse top-k log-probs whose mass rounds to >= 1: tail -inf (no NaN), counted as clamped."""
    toy = make_toy()
    sparse = toy.sparse_scores(3, with_tail=False)
    lp = sparse.topk_logprobs_B_L_K.clone()
    lp[..., 0] = 0.0  # the first top-k token alone has mass 1: sum >= 1
    bad = TeacherScores(token_logprobs_B_L=sparse.token_logprobs_B_L, topk_ids_B_L_K=sparse.topk_ids_B_L_K,
                        topk_logprobs_B_L_K=lp, temperature=toy.temperature)
    res = TeacherTopK()(D.ReverseKL(), toy.student(), bad, toy.batch, toy.mask, top_k=3, chunk_size=4)
    assert res.metric_sums["clamped"] == int(toy.mask.sum())
    assert torch.isfinite(res.values_B_L).all()
    g = grads(res, toy, torch.ones(toy.mask.shape, dtype=torch.float64))
    assert all(torch.isfinite(x).all() for x in g)


# ----------------------------------------------------------------------------- student top-k
def test_student_topk_dense_equals_hand_built():
    toy, k = make_toy(), 4
    res = StudentTopK()(D.GeneralizedJSD(beta=0.5), toy.student(), toy.dense_scores(), toy.batch, toy.mask,
                        top_k=k, chunk_size=2)
    ids = toy.student_logp()[toy.mask].detach().topk(k).indices
    s, t = _hand_teacher_topk(toy, k, ids_N_K=ids)
    ref_N = D.GeneralizedJSD(beta=0.5)(s, t)
    torch.testing.assert_close(res.values_B_L[toy.mask], ref_N, rtol=1e-8, atol=1e-10)
    w = weights(toy)
    for g, g_ref in zip(grads(res, toy, w), ref_grads(ref_N, toy, w)):
        torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-9)


def test_student_topk_from_server_extras():
    toy, k = make_toy(), 3
    ids_B_L_K = toy.student_logp().detach().topk(k).indices
    t_lp = toy.teacher_logp().gather(-1, ids_B_L_K)
    sparse = toy.sparse_scores(k)
    scores = TeacherScores(token_logprobs_B_L=sparse.token_logprobs_B_L, topk_ids_B_L_K=sparse.topk_ids_B_L_K,
                           topk_logprobs_B_L_K=sparse.topk_logprobs_B_L_K, temperature=toy.temperature,
                           chosen_ids_B_L_K=ids_B_L_K, chosen_logprobs_B_L_K=t_lp)
    res = StudentTopK()(D.ReverseKL(), toy.student(), scores, toy.batch, toy.mask, top_k=k, chunk_size=4)
    s, t = _hand_teacher_topk(toy, k, ids_N_K=ids_B_L_K[toy.mask])
    torch.testing.assert_close(res.values_B_L[toy.mask], D.ReverseKL()(s, t), rtol=1e-6, atol=1e-8)
    assert 0 <= res.metric_sums["topk_overlap"] <= int(toy.mask.sum())
    with pytest.raises(ValueError, match="student_topk"):
        StudentTopK()(D.ReverseKL(), toy.student(), sparse, toy.batch, toy.mask, top_k=k, chunk_size=4)


# ----------------------------------------------------------------------------- sampled
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
def test_sampled_uses_the_estimator_on_the_batch_tokens(dense):
    toy = make_toy()
    scores = toy.dense_scores() if dense else toy.sparse_scores(3)
    res = Sampled()(E.K2(), toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=3)
    m = toy.mask
    tok = toy.batch.input_ids_B_L[..., None]
    lq = toy.student_logp().gather(-1, tok).squeeze(-1)[m]
    lp = toy.teacher_logp().gather(-1, tok).squeeze(-1)[m]
    ref_N = 0.5 * (lq - lp) ** 2
    torch.testing.assert_close(res.values_B_L[m], ref_N)
    torch.testing.assert_close(res.student_token_logprobs_B_L[m], lq)
    w = weights(toy)
    for g, g_ref in zip(grads(res, toy, w), ref_grads(ref_N, toy, w)):
        torch.testing.assert_close(g, g_ref)
    ms = res.metric_sums
    if dense:
        exact = D.ReverseKL()(toy.student_logp()[m], toy.teacher_logp()[m]).sum().detach()
        assert math.isclose(ms["reverse_kl"], float(exact), rel_tol=1e-9)
    else:
        assert math.isclose(ms["reverse_kl"], float((lq - lp).sum().detach()), rel_tol=1e-6)  # k1 (float32 metrics)
    assert math.isclose(ms["tail_mass"], float((1 - lp.exp()).sum()), rel_tol=1e-6)
    assert {"student_entropy", "teacher_entropy", "topk_overlap", "clamped"} <= set(ms)
    assert Sampled.uses_estimator and not Full.uses_estimator
    with pytest.raises(TypeError):
        Sampled()(D.ReverseKL(), toy.student(), scores, toy.batch, toy.mask, top_k=3, chunk_size=3)


@pytest.mark.parametrize("support,fn", [(Full(), D.ReverseKL()), (TeacherTopK(), D.ReverseKL()),
                                        (StudentTopK(), D.ReverseKL()), (Sampled(), E.K3())])
def test_empty_mask_still_backpropagates(support, fn):
    toy = make_toy()
    empty = torch.zeros_like(toy.mask)
    res = support(fn, toy.student(), toy.dense_scores(top_k=3), toy.batch, empty, top_k=3, chunk_size=4)
    assert (res.values_B_L == 0).all()
    res.values_B_L.sum().backward()
    assert toy.student_head.grad is not None and (toy.student_head.grad == 0).all()


def test_fake_rollout_fixture_feeds_the_token_loss(fake_rollout, opd_manager, opd_config):
    """The fixtures opdplug ships to plugin authors produce data the real loss accepts."""
    from opdplug.context import RunContext
    from opdplug.types import StudentOutputs

    batch, scores, hidden, head = fake_rollout(B=3, V=11, H=8)
    manager = opd_manager()
    ctx = RunContext(config=opd_config({}, manager), manager=manager)
    credit = ctx.manager.hook.opd_credit(ctx=ctx, batch=batch, scores=scores)
    out = ctx.manager.hook.opd_loss(ctx=ctx, batch=batch, scores=scores, credit=credit,
                                    student=StudentOutputs(hidden_B_L_H=hidden, lm_head_V_H=head))
    assert out.num_tokens == batch.num_loss_tokens and out.loss_sum > 0
    out.loss_sum.backward()
    assert hidden.grad is not None and head.grad.abs().sum() > 0
