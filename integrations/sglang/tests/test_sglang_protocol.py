"""The /generate mapping, on answers recorded from a real SGLang 0.5.23 server (tests/data)."""
import copy
import json
from pathlib import Path

import pytest
import torch

from opdplug_sglang.client import MalformedResponse
from opdplug_sglang.protocol import (
    answers_of, batch_payload, parse_sample, parse_scoring, sampling_payload, scoring_payload,
)

RECORDED = json.loads((Path(__file__).parent / "data" / "sglang_0_5_23_answers.json").read_text())


def test_the_request_asks_one_position_early():
    ids = [1, 4, 5, 6, 7, 8, 9, 10]
    p = scoring_payload(ids, 5, top_k=3, chosen_ids=[2, 5, 9])
    assert p["logprob_start_len"] == 4 and p["sampling_params"]["max_new_tokens"] == 0
    assert p["top_logprobs_num"] == 3 and p["token_ids_logprob"] == [2, 5, 9]
    with pytest.raises(ValueError):
        scoring_payload(ids, 0)


def test_recorded_answer_maps_onto_the_scored_positions():
    rec = RECORDED["score_start_4"]
    ids = rec["request"]["input_ids"]
    assert rec["request"]["logprob_start_len"] == 4
    s = parse_scoring(rec["response"], ids, 5, top_k=3, chosen_ids=[2, 5, 9])
    entries = rec["response"]["meta_info"]["input_token_logprobs"]
    assert entries[0][0] is None  # the null entry of the position before the first scored one
    assert s.num_positions == 3  # positions 5, 6, 7
    assert s.token_logprobs_T.tolist() == pytest.approx([e[0] for e in entries[1:]])
    assert s.topk_ids_T_K.shape == (3, 3) and (s.topk_logprobs_T_K[:, :-1] >= s.topk_logprobs_T_K[:, 1:]).all()
    # the chosen ids' log-probs include the token itself where it is one of them (id 9 at position 6)
    assert s.chosen_logprobs_T_C[1, 2] == pytest.approx(s.token_logprobs_T[1])


def test_the_same_positions_scored_from_another_start_agree():
    ids = RECORDED["score_start_0"]["request"]["input_ids"]
    from_0 = parse_scoring(RECORDED["score_start_0"]["response"], ids, 5, top_k=3)
    from_4 = parse_scoring(RECORDED["score_start_4"]["response"], ids, 5, top_k=3)
    assert torch.allclose(from_0.token_logprobs_T, from_4.token_logprobs_T, atol=1e-6)
    assert torch.equal(from_0.topk_ids_T_K, from_4.topk_ids_T_K)


def test_a_shifted_or_truncated_answer_is_malformed():
    rec = RECORDED["score_start_4"]
    ids = rec["request"]["input_ids"]
    shifted = copy.deepcopy(rec["response"])
    e = shifted["meta_info"]["input_token_logprobs"]
    shifted["meta_info"]["input_token_logprobs"] = e[1:] + e[:1]
    with pytest.raises(MalformedResponse, match="is for token"):
        parse_scoring(shifted, ids, 5)
    short = copy.deepcopy(rec["response"])
    short["meta_info"]["input_token_logprobs"] = e[:2]
    with pytest.raises(MalformedResponse):
        parse_scoring(short, ids, 5)
    no_top = copy.deepcopy(rec["response"])
    del no_top["meta_info"]["input_top_logprobs"]
    with pytest.raises(MalformedResponse, match="input_top_logprobs"):
        parse_scoring(no_top, ids, 5, top_k=3)
    nan = copy.deepcopy(rec["response"])
    nan["meta_info"]["input_token_logprobs"][2][0] = float("nan")
    with pytest.raises(MalformedResponse):
        parse_scoring(nan, ids, 5)
    with pytest.raises(MalformedResponse):
        parse_scoring({"error": "x"}, ids, 5)


def test_a_batched_answer_is_one_answer_per_sequence():
    rec = RECORDED["score_batch_list_starts"]
    answers = answers_of(rec["response"], 2)
    for ids, answer, start in zip(rec["request"]["input_ids"], answers, (4, 2)):  # per-row logprob_start_len
        assert len(answer["meta_info"]["input_token_logprobs"]) == len(ids) - start
        assert parse_scoring(answer, ids, start + 1, top_k=2).num_positions == len(ids) - start - 1
    with pytest.raises(MalformedResponse, match="expected 3 answers"):
        answers_of(rec["response"], 3)


def test_batch_payload_lists_per_sequence_fields():
    a = scoring_payload([1, 2, 3, 4], 2, top_k=2, chosen_ids=[5])
    b = scoring_payload([1, 2, 3], 1, top_k=2, chosen_ids=[6, 7])
    p = batch_payload([a, b])
    assert p["input_ids"] == [[1, 2, 3, 4], [1, 2, 3]] and p["logprob_start_len"] == [1, 0]
    assert p["token_ids_logprob"] == [[5], [6, 7]] and p["top_logprobs_num"] == 2 and p["return_logprob"] is True
    assert batch_payload([a]) is a


def test_a_sample_keeps_the_eos_and_the_servers_log_probs():
    rec = RECORDED["sample_stop_on_eos"]["response"]
    s = parse_sample(rec, max_new_tokens=40, eos_id=2)
    assert s.ids == rec["output_ids"] and s.ids[-1] == 2 and not s.truncated
    assert s.logprobs == pytest.approx([e[0] for e in rec["meta_info"]["output_token_logprobs"]])
    first = RECORDED["sample_batch_T0.7"]["response"][0]
    s = parse_sample(first, max_new_tokens=12, eos_id=2)
    assert s.truncated and len(s.ids) == 12
    with pytest.raises(MalformedResponse):
        parse_sample(first, max_new_tokens=5, eos_id=2)


def test_sampling_payload_stops_on_eos_and_keeps_it():
    p = sampling_payload([1, 4], max_new_tokens=8, temperature=1.0, top_p=0.9, eos_id=2)
    sp = p["sampling_params"]
    assert sp["stop_token_ids"] == [2] and sp["no_stop_trim"] and sp["top_p"] == 0.9
    assert p["return_logprob"] and p["logprob_start_len"] == -1
