"""The TTT loss component (``eagle3/ttt_loss.py``) against a position-by-position reference, and
the two ways it weighs the TTT steps."""
import pytest
import torch

from opdplug_local.tasks import SumChain
from opdplug_drafters.eagle3.options import Eagle3Options
from opdplug_drafters.eagle3.toy import toy_head, toy_target
from opdplug_drafters.eagle3.ttt import generate, target_batch, ttt_loss
from opdplug_drafters.eagle3.ttt_loss import per_step_mean, token_sum, ttt_terms

STEPS, DECAY = 3, 0.8


@pytest.fixture(scope="module")
def setup():
    model, tok = toy_target(num_layers=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # a confident target: the argmax agreement is not all ties
    head = toy_head(model, draft_vocab_size=24)
    prompts = SumChain(tok).prompts(5, seed=3)
    batch = target_batch(model, generate(model, prompts, Eagle3Options(max_new_tokens=9), eos_id=2, pad_id=0, seed=5),
                         head.aux_layers, head.draft_to_target_Vd)
    return head, batch


def naive(head, batch, logits_per_step):
    """Every (row, root t, step j) one at a time: the soft cross-entropy of the token x_{t+2+j}
    when it is a loss token, its argmax hit, and the leading-agreement run of each root."""
    B, L = batch.input_ids_B_L.shape
    ids_Vd = head.draft_to_target_Vd
    ce_sum = [torch.zeros(()) for _ in range(STEPS)]
    count, match = [0] * STEPS, [0] * STEPS
    accepted = [0] * STEPS
    roots, mass = 0, 0.0
    for b in range(B):
        for t in range(L - 1):
            run, alive = 0, True
            for j in range(STEPS):
                p = t + 2 + j
                if p >= L or not batch.loss_mask_B_L[b, p]:
                    alive = False
                    continue
                target_p = torch.softmax(batch.target_logits_B_L_Vd[b, p - 1], -1)
                draft_logp = torch.log_softmax(logits_per_step[j][b, t].float(), -1)
                ce_sum[j] = ce_sum[j] - (target_p * draft_logp).sum()
                count[j] += 1
                hit = int(ids_Vd[logits_per_step[j][b, t].argmax()]) == int(batch.target_argmax_B_L[b, p - 1])
                match[j] += hit
                if j == 0:
                    roots += 1
                    mass += float(batch.target_draft_mass_B_L[b, t + 1])
                if alive and hit:
                    run += 1
                else:
                    alive = False
            if t + 2 < L and batch.loss_mask_B_L[b, t + 2]:
                for k in range(1, STEPS + 1):
                    accepted[k - 1] += min(run, k)
    return ce_sum, count, match, accepted, roots, mass


def test_terms_match_the_position_by_position_reference(setup):
    head, batch = setup
    logits = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, STEPS)
    terms = ttt_terms(logits, batch.target_logits_B_L_Vd, batch.target_argmax_B_L, batch.target_draft_mass_B_L,
                      batch.loss_mask_B_L, head.draft_to_target_Vd)
    ce_sum, count, match, accepted, roots, mass = naive(head, batch, [x.detach() for x in logits])
    for j in range(STEPS):
        torch.testing.assert_close(terms.ce_sum_J[j].detach(), ce_sum[j], rtol=1e-5, atol=1e-4)
    assert terms.count_J == count and terms.match_J == match and terms.accepted_K == accepted
    assert terms.roots == roots == count[0] and terms.draft_mass == pytest.approx(mass, rel=1e-5)


def test_gradients_match_autograd_of_the_reference(setup):
    head, batch = setup
    params = [p for p in head.parameters() if p.requires_grad]
    logits = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, STEPS)
    terms = ttt_terms(logits, batch.target_logits_B_L_Vd, batch.target_argmax_B_L, batch.target_draft_mass_B_L,
                      batch.loss_mask_B_L, head.draft_to_target_Vd)
    ours = torch.autograd.grad(token_sum(terms, DECAY), params)
    logits = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, STEPS)
    ce_sum = naive(head, batch, logits)[0]
    theirs = torch.autograd.grad(sum(DECAY ** j * ce_sum[j] for j in range(STEPS)), params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # float summation order only


def test_token_sum_over_roots_is_the_per_step_mean_when_prompts_are_long_enough(setup):
    """Every prompt here has at least STEPS + 1 tokens: each step predicts as many tokens as step
    0, so the loop's token sum divided by the root count is the old per-step mean."""
    head, batch = setup
    assert int(batch.attention_mask_B_L.sum(-1).min()) > STEPS
    with torch.no_grad():
        logits = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, STEPS)
        terms = ttt_terms(logits, batch.target_logits_B_L_Vd, batch.target_argmax_B_L, batch.target_draft_mass_B_L,
                          batch.loss_mask_B_L, head.draft_to_target_Vd)
        loss, m = ttt_loss(head, batch, STEPS, DECAY)
    assert len(set(terms.count_J)) == 1
    torch.testing.assert_close(token_sum(terms, DECAY) / terms.roots, loss, rtol=1e-6, atol=0)
    assert float(per_step_mean(terms, DECAY)) == m["loss"]  # ttt_loss is the per-step mean itself
    assert m["accept_len_by_k"] == [1 + a / terms.roots for a in terms.accepted_K]
