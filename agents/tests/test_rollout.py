"""Batched multi-turn episodes: experts succeed, models run, ids stay exact, batches are right."""
from __future__ import annotations

import pytest
import torch

from opdplug_local import sampling, tiny
from opdplug.errors import ConfigError
from opdplug.types import PRODUCER_ENV, PRODUCER_PAD, PRODUCER_PROMPT, PRODUCER_STUDENT, PRODUCER_TEACHER
from opdplug_agents import textio
from opdplug_agents.envs import BUILTIN
from opdplug_agents.registries import env_class
from opdplug_agents.rollout import (
    Episode,
    ExpertActor,
    FixedTurn,
    ModelActor,
    Turn,
    episodes_to_batch,
    run_episodes,
)

ALL = sorted(cls.name for cls in BUILTIN)


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer(textio.agent_words(ALL))


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model("tiny", tok, seed=0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_batch(batch, episodes, tok, train_on=("student",)):
    """Everything ``episodes_to_batch`` promises, checked token by token."""
    marker = textio.marker_id(tok)
    for b, e in enumerate(episodes):
        n = len(e.token_ids)
        assert batch.input_ids_B_L[b, :n].tolist() == list(e.token_ids)
        assert batch.attention_mask_B_L[b].sum() == n and not batch.attention_mask_B_L[b, n:].any()
        prod, loss, turn = batch.producer_B_L[b], batch.loss_mask_B_L[b], batch.turn_ids_B_L[b]
        assert prod[0] == PRODUCER_PROMPT and turn[0] == 0
        assert (prod[n:] == PRODUCER_PAD).all() and (turn[n:] == -1).all() and not loss[n:].any()
        assert int(batch.prompt_lens_B[b]) == 1 + len(e.turns[0].observation_ids)
        assert list(batch.prompts[b].prompt_ids) == list(e.token_ids[: int(batch.prompt_lens_B[b])])
        pos = 1
        for t, tr in enumerate(e.turns):
            obs = slice(pos, pos + len(tr.observation_ids))
            act = slice(obs.stop, obs.stop + len(tr.action_ids))
            close = slice(act.stop, act.stop + len(tr.closing_ids))
            assert int(batch.input_ids_B_L[b, obs.stop - 1]) == marker
            assert (prod[obs] == PRODUCER_ENV).all() and not loss[obs].any()  # observations: no loss
            assert (prod[close] == PRODUCER_ENV).all() and not loss[close].any()
            code = PRODUCER_STUDENT if tr.producer == "student" else PRODUCER_TEACHER
            assert (prod[act] == code).all()
            assert (loss[act] == int(tr.producer in train_on)).all()
            assert (turn[obs.start:close.stop] == t).all()
            assert torch.allclose(batch.sampling_logprobs_B_L[b, act], torch.tensor(tr.action_logprobs))
            pos = close.stop
        assert pos == n
        assert float(batch.rewards_B[b]) == float(e.success)
        assert bool(batch.truncated_B[b]) == e.truncated


@pytest.mark.parametrize("name", ALL)
def test_batched_expert_episodes_succeed(tok, name):
    specs = [(name, seed, {"horizon": h, "split": split}) for h in (2, 4) for seed in range(4) for split in ("train", "eval")]
    episodes = run_episodes(specs, ExpertActor(), tok, max_action_tokens=40, temperature=1.0, generator=None)
    assert all(e.success and e.terminated and not e.truncated for e in episodes)
    for (_, seed, options), e in zip(specs, episodes):
        assert e.env == name and e.seed == seed and e.options == options
        assert all(t.producer == "expert" and t.valid and not t.truncated for t in e.turns)
        assert all(t.action_ids[-1] == tok.eos_token_id and set(t.action_logprobs) == {0.0} for t in e.turns)
        # The replayed action texts give the same episode in a fresh environment.
        env = env_class(name)(**options)
        env.reset(seed=seed)
        assert env.replay([t.action_text for t in e.turns]) == e.final_observation
    batch = episodes_to_batch(episodes, train_on=("expert",))
    check_batch(batch, episodes, tok, train_on=("expert",))
    assert batch.num_loss_tokens == sum(len(t.action_ids) for e in episodes for t in e.turns)
    assert batch.rewards_B.tolist() == [1.0] * len(episodes) and not batch.on_policy_B.any()


def test_hand_built_episode_batch(tok):
    """Observation tokens never get loss, and the ids are the concatenation of the turns' ids."""
    eos, marker = tok.eos_token_id, textio.marker_id(tok)
    vocab = tok.get_vocab()
    obs0 = (vocab["list"], vocab[":"], vocab["3"], vocab["2"], marker)
    obs1 = (vocab["list"], vocab[":"], vocab["2"], vocab["3"], marker)
    swap = tuple(textio.encode_action(tok, '{"tool": "swap", "args": {"i": 0}}'))
    done = tuple(textio.encode_action(tok, '{"tool": "done", "args": {}}'))
    turns = (
        Turn("list : 3 2", obs0, swap[:3], "x", "student", (-1.0, -2.0, -3.0), False, truncated=True, closing_ids=(eos,)),
        Turn("list : 3 2", obs0, swap, "y", "expert", (0.0,) * len(swap), True),
        Turn("list : 2 3", obs1, done, "z", "student", tuple(-0.5 for _ in done), True),
    )
    ids = (tok.bos_token_id,) + obs0 + swap[:3] + (eos,) + obs0 + swap + obs1 + done
    episode = Episode("swapsort", 0, {"horizon": 1}, turns, True, True, False, "done , the list is sorted",
                      (tok.bos_token_id,), 3, ids)
    with pytest.raises(ValueError, match="concatenation"):
        Episode("swapsort", 0, {}, turns, True, True, False, "", (tok.bos_token_id,), 3, ids[:-1])
    batch = episodes_to_batch([episode], train_on=("student",))
    check_batch(batch, [episode], tok)
    prod, loss = batch.producer_B_L[0].tolist(), batch.loss_mask_B_L[0].tolist()
    P = 1 + len(obs0)
    expected_loss = [0] * P + [1] * 3 + [0] + [0] * (len(obs0) + len(swap)) + [0] * len(obs1) + [1] * len(done)
    assert loss == expected_loss
    assert prod[P + 3] == PRODUCER_ENV  # the env's <eos> after the truncated action
    assert batch.turn_ids_B_L[0].tolist() == [0] * (P + 4) + [1] * (len(obs0) + len(swap)) + [2] * (len(obs1) + len(done))
    assert batch.sampling_logprobs_B_L[0, P:P + 3].tolist() == [-1.0, -2.0, -3.0]
    assert batch.prompt_lens_B.tolist() == [P] and batch.rewards_B.tolist() == [1.0]
    both = episodes_to_batch([episode], train_on=("student", "expert"))
    assert both.num_loss_tokens == 3 + len(swap) + len(done)


def test_model_actor_runs_batched_episodes_with_exact_ids(tok, model):
    specs = [(name, seed, {"horizon": 2, "max_turns": 3}) for name in ALL for seed in range(2)]
    episodes = run_episodes(specs, ModelActor(model), tok, max_action_tokens=12, temperature=1.0, generator=gen())
    assert all(1 <= e.num_turns <= 3 for e in episodes)
    assert any(t.truncated for e in episodes for t in e.turns)  # an untrained model rambles
    for e in episodes:
        assert all(t.producer == "student" for t in e.turns)
        assert all(len(t.action_ids) == 12 if t.truncated else t.action_ids[-1] == tok.eos_token_id for t in e.turns)
        assert all(t.closing_ids == ((tok.eos_token_id,) if t.truncated else ()) for t in e.turns)
        assert all(t.action_text == textio.decode_action(tok, t.action_ids) for t in e.turns)
        assert e.truncated or e.terminated
    batch = episodes_to_batch(episodes)
    check_batch(batch, episodes, tok)
    assert batch.on_policy_B.all()
    # The recorded sampling log-probs are the model's log-probs of exactly these ids.
    with torch.no_grad():
        rescored_B_L = sampling.forward_logprobs(model, batch.input_ids_B_L, batch.attention_mask_B_L, 1.0)
    mask = batch.loss_mask_B_L.bool()
    assert torch.allclose(rescored_B_L[mask], batch.sampling_logprobs_B_L[mask], atol=1e-4)


def test_greedy_episodes_do_not_depend_on_the_batch(tok, model):
    specs = [("swapsort", 3, {"horizon": 2, "max_turns": 3}), ("gridnav", 5, {"horizon": 2, "max_turns": 2}),
             ("calc_lookup", 1, {"horizon": 2, "max_turns": 3})]
    together = run_episodes(specs, ModelActor(model), tok, max_action_tokens=10, temperature=0.0, generator=gen())
    for spec, e in zip(specs, together):
        (alone,) = run_episodes([spec], ModelActor(model), tok, max_action_tokens=10, temperature=0.0, generator=gen(7))
        assert alone.token_ids == e.token_ids and alone.num_turns == e.num_turns
        for a, b in zip(alone.turns, e.turns):
            assert torch.allclose(torch.tensor(a.action_logprobs), torch.tensor(b.action_logprobs), atol=1e-5)


def test_prefixes_replay_exactly_then_actors_take_over(tok, model):
    """SCoRe's shape: turns 0..k-1 replayed, turn k by the teacher (here the expert), then the student."""
    specs = [("swapsort", s, {"horizon": 4}) for s in range(3)]
    student = ModelActor(model, "student")
    first = run_episodes(specs, student, tok, max_action_tokens=8, temperature=1.0, generator=gen(1))
    k = 2
    prefixes = [[FixedTurn(t.action_ids, t.producer, t.action_logprobs) for t in e.turns[:k]] for e in first]
    prefixes[1] = [(t.action_ids, t.producer) for t in first[1].turns[:k]]  # plain pairs work too
    expert = ExpertActor()

    def choose(i, turn):
        assert turn >= k  # prefix turns never ask an actor
        return expert if turn == k else student

    second = run_episodes(specs, choose, tok, max_action_tokens=8, max_turns=5, temperature=1.0,
                          generator=gen(2), prefixes=prefixes)
    for i, (a, b) in enumerate(zip(first, second)):
        n = sum(len(t.token_ids) for t in a.turns[:k]) + 1
        assert b.token_ids[:n] == a.token_ids[:n]
        assert [t.action_ids for t in b.turns[:k]] == [t.action_ids for t in a.turns[:k]]
        assert [t.observation for t in b.turns[: k + 1]] == [t.observation for t in a.turns[: k + 1]]
        if i != 1:
            assert [t.action_logprobs for t in b.turns[:k]] == [t.action_logprobs for t in a.turns[:k]]
        else:
            assert all(set(t.action_logprobs) == {0.0} for t in b.turns[:k])
        assert b.turns[k].producer == "expert" and all(t.producer == "student" for t in b.turns[k + 1:])
        assert b.num_turns == 5 or b.terminated
    batch = episodes_to_batch(second, train_on=("student",))
    check_batch(batch, second, tok)


def test_bad_inputs_are_one_line_errors(tok, model):
    with pytest.raises(ConfigError, match="unknown environment 'nope'; allowed: calc_lookup, gridnav"):
        run_episodes([("nope", 0, {})], ExpertActor(), tok, max_action_tokens=4, temperature=1.0, generator=None)
    eos = tok.eos_token_id
    with pytest.raises(ValueError, match="before its last token"):
        run_episodes([("swapsort", 0, {"horizon": 1})], ExpertActor(), tok, max_action_tokens=4, temperature=1.0,
                     generator=None, prefixes=[[((eos, eos), "student")]])
    with pytest.raises(ValueError, match="prefix turns left"):
        done = textio.encode_action(tok, '{"tool": "done", "args": {}}')
        run_episodes([("swapsort", 0, {"horizon": 1})], ExpertActor(), tok, max_action_tokens=4, temperature=1.0,
                     generator=None, prefixes=[[(done, "student"), (done, "student")]])
    with pytest.raises(ValueError, match="producer"):
        episodes_to_batch(run_episodes([("swapsort", 0, {"horizon": 1})], ExpertActor(), tok, max_action_tokens=4,
                                       temperature=1.0, generator=None), train_on=("teachr",))


def test_max_tokens_stops_an_episode_before_the_context_is_full(tok, model):
    (e,) = run_episodes([("gridnav", 0, {"horizon": 4})], ModelActor(model), tok, max_action_tokens=10,
                        temperature=1.0, generator=gen(), max_tokens=150)
    assert e.truncated and not e.terminated and len(e.token_ids) <= 150
