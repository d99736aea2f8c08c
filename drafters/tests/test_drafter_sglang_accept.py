"""``opdplug drafter sglang-accept``: SGLang's spec_accept_length beside opdplug's prediction.

Speculative decoding does not run on a CPU SGLang, so the served side is checked on answers of
the shape SGLang 0.5.23 returns (``meta_info.spec_verify_ct`` and ``completion_tokens``, see
``tokenizer_manager.py``), and the command's failures on a server that does no speculative
decoding (the stand-in) or none at all.
"""
import pytest

pytest.importorskip("opdplug_sglang")

from opdplug.errors import ConfigError  # noqa: E402
from opdplug_drafters.sglang_accept import check_settings, summarize  # noqa: E402
from opdplug_sglang.testing.servers import serve  # noqa: E402

from test_drafter_cli import run_cli  # noqa: E402


def _answer(ids, verify_ct, eos=2):
    meta = {"output_token_logprobs": [[-0.1, t, None] for t in ids], "completion_tokens": len(ids),
            "finish_reason": {"type": "stop"} if ids and ids[-1] == eos else {"type": "length"}}
    if verify_ct is not None:
        meta["spec_verify_ct"] = verify_ct
        meta["spec_accept_length"] = len(ids) / verify_ct
    return {"output_ids": ids, "meta_info": meta}


def test_counts_follow_sglangs_definition():
    answers = [_answer([5, 6, 7, 8, 9, 2], 2), _answer([4, 4, 4, 4], 1), _answer([7, 2], 1)]
    got = summarize(answers, budgets=[10, 4, 10], eos_id=2)
    assert (got.requests, got.completion_tokens, got.verify_forwards) == (3, 12, 4)
    assert got.spec_accept_length == 12 / 4  # SGLang's figure: the prefill's token included
    assert got.accept_length_per_round == (12 - 3) / 4
    assert got.completions[0] == [5, 6, 7, 8, 9, 2]


def test_a_server_without_speculative_decoding_is_a_one_line_error():
    with pytest.raises(ConfigError) as err:
        summarize([_answer([5, 2], None)], budgets=[4], eos_id=2, url="http://h:1")
    assert "spec_verify_ct" in str(err.value) and "--speculative-algorithm" in str(err.value) and "\n" not in str(err.value)


def test_server_settings_must_match_a_chain_of_k_drafts():
    # Flat keys, as SGLang 0.5.23's /server_info reports its resolved server arguments.
    info = {"speculative_algorithm": "EAGLE3", "speculative_num_steps": 4, "speculative_eagle_topk": 1,
            "speculative_num_draft_tokens": 5}
    assert check_settings(info, 4)["algorithm"] == "EAGLE3"
    assert check_settings({"model_path": "x"}, 4) == {}  # not an SGLang answer: nothing to compare
    for bad, needle in [({"speculative_num_steps": 3}, "--speculative-num-steps"),
                        ({"speculative_eagle_topk": 4}, "--speculative-eagle-topk 1"),
                        ({"speculative_algorithm": None}, "--speculative-algorithm")]:
        with pytest.raises(ConfigError) as err:
            check_settings({**info, **bad}, 4, url="http://h:1")
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_command_fails_in_one_line_against_a_plain_or_absent_server(quick_target, capsys):
    target = quick_target / "target"
    server = serve("reference", target)
    url = server.url
    try:
        code, _, err = run_cli(capsys, "drafter", "sglang-accept", str(target), "--target", str(target),
                               "--url", url, "--prompts", "2", "--json")
    finally:
        server.stop()
    # The stand-in reports its server args: the settings check names the missing flag before any
    # request (a server without /server_info fails later, on the missing spec_verify_ct).
    assert code != 0 and "--speculative-algorithm" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "drafter", "sglang-accept", str(target), "--target", str(target),
                           "--url", url, "--prompts", "2", "--retry-budget", "0.5", "--json")  # stopped: nothing listens there
    assert code != 0 and url.split("//")[1] in err and len(err.strip().splitlines()) == 1
