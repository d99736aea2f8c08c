"""Auxiliary hidden states over /generate: the request, and the parser on an answer recorded from a
real SGLang 0.5.23 server in capture-only mode (tests/data/sglang_0_5_23_aux_hidden_states.json),
then on answers broken the ways a server or a proxy could break them."""
import copy
import json
from pathlib import Path

import pytest
import torch

from opdplug.errors import PreflightError
from opdplug_sglang.client import MalformedResponse
from opdplug_sglang.features import check_capture_server, features_payload, parse_features, server_flags

RECORD = json.loads((Path(__file__).parent / "data" / "sglang_0_5_23_aux_hidden_states.json").read_text())
IDS, CHOSEN, WIDTH = RECORD["request"]["input_ids"], RECORD["request"]["token_ids_logprob"], 192


def test_the_request_is_the_recorded_one():
    p = features_payload(IDS, CHOSEN)
    for key, value in RECORD["request"].items():
        assert p[key] == value, key  # max_new_tokens 1 (0 returns no hidden states), from position 0
    assert server_flags([0, 1, 2])[-4:] == ["--return-aux-hidden-state-layer-ids", "0", "1", "2"]
    with pytest.raises(ValueError):
        features_payload([5], CHOSEN)


def test_the_recorded_answer_maps_onto_positions():
    f = parse_features(RECORD["response"], IDS, CHOSEN, WIDTH)
    meta = RECORD["response"]["meta_info"]
    assert f.features_L_A.shape == (5, WIDTH)
    assert f.features_L_A[0, :2].tolist() == pytest.approx(meta["hidden_states"][0][0][:2])
    # Row t is the distribution at position t (predicting token t + 1): input rows 1..L-1, then the output row.
    assert f.chosen_logprobs_L_C[0].tolist() == pytest.approx([e[0] for e in meta["input_token_ids_logprobs"][1]])
    assert f.chosen_logprobs_L_C[-1].tolist() == pytest.approx([e[0] for e in meta["output_token_ids_logprobs"][0]])
    assert f.argmax_L.tolist() == [r[0][1] for r in meta["input_top_logprobs"][1:]] + [meta["output_top_logprobs"][0][0][1]]
    assert f.token_logprobs_L[0] == 0 and f.token_logprobs_L[1:].tolist() == pytest.approx(
        [e[0] for e in meta["input_token_logprobs"][1:]])
    # Token 9 is both the last token and a chosen id: its two reports agree.
    assert float(f.chosen_logprobs_L_C[3, 2]) == pytest.approx(float(f.token_logprobs_L[4]))


def _broken(change):
    answer = copy.deepcopy(RECORD["response"])
    change(answer["meta_info"])
    return answer


BROKEN = {
    "cached prefix drops rows": lambda m: m["hidden_states"][0].pop(0),
    "no hidden states (max_new_tokens 0)": lambda m: m.__setitem__("hidden_states", []),
    "last-layer states (no aux capture)": lambda m: m["hidden_states"].__setitem__(0, [r[:64] for r in m["hidden_states"][0]]),
    "no output row": lambda m: m.__setitem__("output_token_ids_logprobs", []),
    "shifted tokens": lambda m: m["input_token_logprobs"].__setitem__(2, [-1.0, 8, None]),
    "nan feature": lambda m: m["hidden_states"][0][1].__setitem__(3, float("nan")),
    "a chosen id missing": lambda m: m["output_token_ids_logprobs"][0].pop(),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_answers_are_malformed(case):
    with pytest.raises(MalformedResponse):
        parse_features(_broken(BROKEN[case]), IDS, CHOSEN, WIDTH)


def test_server_settings_are_checked():
    info = RECORD["server_info"]
    check_capture_server(info, [0, 1, 2])
    cases = {
        "does not return EAGLE-3": dict(info, enable_return_aux_hidden_states=False),
        "captures layer ids": dict(info, return_aux_hidden_state_layer_ids=None),
        "radix cache": dict(info, disable_radix_cache=False),
    }
    for words, bad in cases.items():
        with pytest.raises(PreflightError, match=words) as exc:
            check_capture_server(bad, [0, 1, 2], "http://x")
        assert "\n" not in str(exc.value) and "--enable-return-aux-hidden-states" in str(exc.value)
    with pytest.raises(PreflightError, match=r"\[0, 1, 2\], the head reads \[1, 2, 3\]"):
        check_capture_server(info, [1, 2, 3])
