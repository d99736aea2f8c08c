"""Credit across turns (``turn_level``, ``discounted_episode``) and the core ``per_token`` scheme on
agent batches. (Named apart from plugins/tests/test_credit.py: pytest needs unique basenames.)"""
from __future__ import annotations

import pytest
import torch

from agent_stubs import bad_student
from opdplug_local import tiny
from opdplug.types import TeacherScores
from opdplug_agents import textio
from opdplug_agents.correction import correct_episodes, correction_batch
from opdplug_agents.credit import DiscountedEpisode, TurnLevel, turns_remaining
from opdplug_agents.envs import BUILTIN
from opdplug_agents.locators import ExpertLocator, LocatorDeps
from opdplug_agents.rollout import ExpertActor, episodes_to_batch, run_episodes

SPECS = [("swapsort", seed, {"horizon": 4, "max_turns": 5}) for seed in range(3)]


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(textio.agent_words(sorted(cls.name for cls in BUILTIN)))


@pytest.fixture(scope="module")
def score_batch(tok):
    c = correct_episodes(SPECS, bad_student({1}), ExpertActor(), ExpertLocator(), LocatorDeps(tokenizer=tok), tok,
                         max_action_tokens=40, temperature=1.0, max_repairs=1)
    c.corrected[2] = c.original[2]  # one row left uncorrected: it fails (reward 0) and has no key step
    c.key_turns[2] = []
    batch = correction_batch(c, [e.prompt() for e in c.original], pad_id=tok.pad_token_id, key_reward="episode")
    # Fake sampling log-probs so the per-token advantages are not all zero.
    g = torch.Generator().manual_seed(0)
    batch = batch.replace(sampling_logprobs_B_L=-torch.rand(batch.input_ids_B_L.shape, generator=g) * batch.loss_mask_B_L)
    return batch


def scores_for(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TeacherScores(token_logprobs_B_L=-torch.rand(batch.input_ids_B_L.shape, generator=g) * batch.loss_mask_B_L)


def test_turn_level_weights_key_steps(score_batch):
    batch, scores = score_batch, scores_for(score_batch)
    assert batch.batch_size == 5 and batch.rewards_B.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    mask, key = batch.loss_mask_B_L.bool(), batch.key_step_B_L
    assert key.any() and not key[2].any()
    credit = TurnLevel(key_weight=3.0)(batch, scores)
    w = credit.weights_B_L
    assert (w[key] == 3.0).all() and (w[mask & ~key] == 1.0).all() and (w[~mask] == 0).all()
    assert torch.allclose(credit.advantages_B_L, (scores.token_logprobs_B_L - batch.sampling_logprobs_B_L) * mask)
    assert credit.metrics["key_tokens"] == float(key.sum())
    scaled = TurnLevel(key_weight=3.0, scale_by_reward=True)(batch, scores).weights_B_L
    assert (scaled[2] == 0).all() and torch.equal(scaled[[0, 1, 3, 4]], w[[0, 1, 3, 4]])
    norm = TurnLevel(key_weight=3.0, normalize=True)(batch, scores).weights_B_L
    assert torch.isclose(norm[mask].mean(), torch.tensor(1.0)) and torch.allclose(norm[key] / norm[mask & ~key][0], torch.tensor(3.0))
    # Without key-step marks it is the per-token scheme's mask.
    plain = TurnLevel(key_weight=3.0)(batch.replace(key_step_B_L=None), scores)
    assert torch.equal(plain.weights_B_L, batch.loss_mask_B_L.float())
    with pytest.raises(ValueError, match="key_weight"):
        TurnLevel(key_weight=-1.0)


def test_discounted_episode_advantages(score_batch):
    batch, scores = score_batch, scores_for(score_batch)
    mask = batch.loss_mask_B_L.bool()
    remaining = turns_remaining(batch)
    last = batch.turn_ids_B_L.max(dim=1).values
    for b in range(batch.batch_size):
        real = batch.attention_mask_B_L[b].bool()
        assert torch.equal(remaining[b][real], last[b] - batch.turn_ids_B_L[b][real])
    credit = DiscountedEpisode(gamma=0.5)(batch, scores)
    rewards = batch.rewards_B
    centred = rewards - rewards.mean()
    expected = (0.5 ** remaining.float()) * centred[:, None] * mask
    assert torch.allclose(credit.advantages_B_L, expected) and torch.equal(credit.weights_B_L, mask.float())
    # The last turn gets the full centred reward; a failed row's advantages are negative.
    b = 0
    on_last = mask[b] & (batch.turn_ids_B_L[b] == last[b])
    assert torch.allclose(credit.advantages_B_L[b][on_last], centred[b].expand(int(on_last.sum())))
    assert (credit.advantages_B_L[2][mask[2]] < 0).all()
    zero = DiscountedEpisode(gamma=1.0, baseline="zero", kl_coef=0.5)(batch, scores)
    kl = (scores.token_logprobs_B_L - batch.sampling_logprobs_B_L) * mask
    assert torch.allclose(zero.advantages_B_L, rewards[:, None] * mask + 0.5 * kl)
    # Rows without rewards count as 0; a single-turn batch has no turns to discount.
    none = DiscountedEpisode()(batch.replace(rewards_B=None, turn_ids_B_L=None), scores)
    assert not none.advantages_B_L.any()
    with pytest.raises(ValueError, match="gamma"):
        DiscountedEpisode(gamma=1.5)


def test_per_token_works_on_agent_batches(tok):
    from opdplug_token.credit import PerToken

    model = tiny.build_model("tiny", tok, seed=0)
    from opdplug_agents.rollout import ModelActor

    episodes = run_episodes([("gridnav", s, {"horizon": 2, "max_turns": 3}) for s in range(2)], ModelActor(model), tok,
                            max_action_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    batch = episodes_to_batch(episodes, pad_id=tok.pad_token_id)
    scores = scores_for(batch)
    credit = PerToken()(batch, scores)
    mask = batch.loss_mask_B_L.bool()
    assert batch.turn_ids_B_L.max() >= 1
    assert (credit.weights_B_L[~mask] == 0).all() and (credit.advantages_B_L[~mask] == 0).all()
    assert torch.allclose(credit.advantages_B_L[mask], (scores.token_logprobs_B_L - batch.sampling_logprobs_B_L)[mask])


def test_schemes_are_registered_by_the_agents_plugin(opd_manager):
    registry = opd_manager().registry
    assert registry.owners["credit_schemes"]["turn_level"] == "agents"
    assert registry.owners["credit_schemes"]["discounted_episode"] == "agents"
    assert registry.build("credit_schemes", "turn_level", {"key_weight": 4.0}, "credit.scheme").key_weight == 4.0
    assert registry.owners["samplers"]["agent_score"] == registry.owners["samplers"]["agent_dagger"] == "agents"
