"""The serving checks of ``verify_sglang_cpu.py``: sampling (temperature, top_p, EOS, stop ids,
seeds, latency), the endpoints, the weight update, and the second server (hidden states, no
radix cache)."""
from __future__ import annotations

import json
import time

from sglang_verify_harness import RECORD, Case, Http, check, hf_logprobs, score_err


def check_sampling(http: Http, c: Case) -> None:
    m0, eos = c.m0, c.eos
    # ---------------------------------------------------------------- b. sampling
    prompts = [[1, 4, 5], [1, 6, 7, 8]]
    T = 0.7
    body = {"input_ids": prompts, "sampling_params": {"max_new_tokens": 12, "temperature": T, "top_p": 1.0},
            "return_logprob": True, "logprob_start_len": -1, "top_logprobs_num": 2}
    st, r = http.post("/generate", body, key="sample_batch_T0.7")
    check(st == 200 and len(r) == 2, "sampling batch returns a list, one per prompt")
    for b, x in enumerate(r):
        mi, out = x["meta_info"], x["output_ids"]
        otl = mi["output_token_logprobs"]
        seq = prompts[b] + out
        lpT = hf_logprobs(m0, seq, T)
        lp1 = hf_logprobs(m0, seq, 1.0)
        eT = max(abs(e[0] - float(lpT[len(prompts[b]) + i - 1, e[1]])) for i, e in enumerate(otl))
        e1 = max(abs(e[0] - float(lp1[len(prompts[b]) + i - 1, e[1]])) for i, e in enumerate(otl))
        check([e[1] for e in otl] == out and len(out) == mi["completion_tokens"],
              f"sample[{b}]: output_token_logprobs ids == output_ids ({len(out)} tokens), finish_reason={mi['finish_reason']}")
        check(eT < 1e-4, f"sample[{b}]: output logprobs are log_softmax(logits/T) (err {eT:.2e}; vs T=1 {e1:.2e})")
        check(mi["input_token_logprobs"] == [] or len(mi["input_token_logprobs"]) <= 1,
              f"sample[{b}]: logprob_start_len -1 -> input_token_logprobs={mi['input_token_logprobs']}")

    # top_p < 1: are the returned logprobs renormalised over the nucleus?
    body = {"input_ids": prompts[0], "sampling_params": {"max_new_tokens": 6, "temperature": 1.0, "top_p": 0.3},
            "return_logprob": True}
    st, r = http.post("/generate", body, key="sample_top_p_0.3")
    out, otl = r["output_ids"], r["meta_info"]["output_token_logprobs"]
    lp1 = hf_logprobs(m0, prompts[0] + out)
    diff = [e[0] - float(lp1[len(prompts[0]) + i - 1, e[1]]) for i, e in enumerate(otl)]
    print(f"info top_p=0.3: returned - full-vocab logprob per token: {[round(d, 4) for d in diff]}")
    RECORD["top_p_logprob_minus_full_vocab"] = diff

    # EOS handling: sample until some row stops on EOS
    body = {"input_ids": [[1, 4]] * 16, "sampling_params": {"max_new_tokens": 40, "temperature": 1.5},
            "return_logprob": True}
    st, r = http.post("/generate", body)
    stops = [x for x in r if x["meta_info"]["finish_reason"]["type"] == "stop"]
    if stops:
        x = stops[0]
        RECORD["sample_stop_on_eos"] = {"request": body, "response": x}
        check(x["output_ids"][-1] == eos and x["meta_info"]["output_token_logprobs"][-1][1] == eos,
              f"EOS stop: finish_reason={x['meta_info']['finish_reason']}, output_ids ends with eos: {x['output_ids'][-3:]}")
    else:
        print("info no EOS stop sampled")
    lens = [x for x in r if x["meta_info"]["finish_reason"]["type"] == "length"]
    if lens:
        RECORD["sample_stop_on_length"] = {"finish_reason": lens[0]["meta_info"]["finish_reason"]}

    # stop_token_ids: is the stop token in output_ids?
    body = {"input_ids": [[1, 4]] * 8, "sampling_params": {"max_new_tokens": 40, "temperature": 1.5,
                                                          "stop_token_ids": [9, 10]}, "return_logprob": True}
    st, r = http.post("/generate", body)
    hits = [x for x in r if x["meta_info"]["finish_reason"].get("matched") in (9, 10)]
    if hits:
        RECORD["sample_stop_token_ids"] = {"request": body, "response": hits[0]}
        x = hits[0]
        check(x["output_ids"][-1] in (9, 10),
              f"stop_token_ids: finish_reason={x['meta_info']['finish_reason']}, last ids {x['output_ids'][-3:]}")

    # per-request seed
    def sample(seed):
        body = {"input_ids": [1, 4], "sampling_params": {"max_new_tokens": 16, "temperature": 1.0, "ignore_eos": True}}
        if seed is not None:
            body["sampling_params"]["sampling_seed"] = seed
        st, r = http.post("/generate", body, key=f"sample_seed_{seed}")
        return st, r.get("output_ids") if isinstance(r, dict) else r

    a, b, c, d = sample(7), sample(7), sample(8), sample(None)
    RECORD["seed_outputs"] = {"seed7_a": a, "seed7_b": b, "seed8": c, "none": d}
    print(f"info sampling_seed: 7 -> {a}, 7 again -> {b}, 8 -> {c}, none -> {d}")
    # sampling_seed is only read under --enable-deterministic-inference, which the CPU attention
    # backends do not support (the server refuses to start): on CPU it is accepted and ignored.
    check(a[0] == 200 and a != b, f"sampling_seed is accepted but ignored on CPU (7 twice gives different tokens: {a != b})")

    # ignore_eos / n
    st, r = http.post("/generate", {"input_ids": [1, 4], "sampling_params": {"max_new_tokens": 5, "n": 3, "temperature": 1.0}},
                      key="sample_n3")
    print(f"info n=3 on one prompt: status {st}, type {type(r).__name__}, len {len(r) if isinstance(r, list) else '-'}")

    # too long for the context (max_position_embeddings 1024)
    st, r = http.post("/generate", {"input_ids": [1] + [4] * 1100, "sampling_params": {"max_new_tokens": 0},
                                    "return_logprob": True, "logprob_start_len": 0}, key="score_too_long")
    RECORD["score_too_long"]["request"]["body"]["input_ids"] = "[1] + [4] * 1100"
    print(f"info 1101 tokens > context 1024: status {st} {str(r)[:300]}")

    # latency of a realistic scoring batch: 16 sequences of 64 tokens, with and without top-k
    rows = [[1] + [(7 * b + 3 * t) % 25 + 4 for t in range(63)] for b in range(16)]
    for k in (0, 20):
        body = {"input_ids": rows, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
                "logprob_start_len": 31, "top_logprobs_num": k}
        t = time.time()
        st, r = http.post("/generate", body)
        dt = time.time() - t
        RECORD[f"latency_score_16x64_top{k}_s"] = round(dt, 3)
        print(f"info scoring 16 x 64 tokens (logprob_start_len 31, top_logprobs_num {k}): {dt:.3f}s, status {st}")
    body = {"input_ids": [[1, 4]] * 16, "sampling_params": {"max_new_tokens": 64, "temperature": 1.0, "ignore_eos": True},
            "return_logprob": True}
    t = time.time()
    st, r = http.post("/generate", body)
    dt = time.time() - t
    RECORD["latency_sample_16x64_s"] = round(dt, 3)
    print(f"info sampling 16 x 64 new tokens: {dt:.3f}s, status {st}")
    check(all(x["meta_info"]["completion_tokens"] == 64 for x in r),
          "ignore_eos: true -> every row generates all 64 tokens")


def check_endpoints(http: Http, c: Case) -> None:
    tok = c.tok
    # ---------------------------------------------------------------- c. endpoints
    for path in ["/health", "/health_generate", "/ready", "/get_model_info", "/model_info", "/get_server_info",
                 "/get_weight_version", "/v1/models", "/flush_cache"]:
        st, r = http.get(path, key=f"GET {path}")
        if path in ("/get_server_info",) and isinstance(r, dict):
            RECORD[f"GET {path}"]["response"] = {
                "n_keys": len(r), **{k: r.get(k) for k in ("version", "model_path", "port", "max_total_num_tokens",
                                                           "disable_radix_cache", "enable_return_hidden_states")}}
        print(f"info GET {path}: {st} {json.dumps(RECORD[f'GET {path}']['response'])[:300]}")
    st, r = http.post("/flush_cache", {}, key="POST /flush_cache")
    print(f"info POST /flush_cache: {st} {r!r}")
    st, r = http.post("/tokenize", {"prompt": "3 + 4 = 7"}, key="POST /tokenize")
    print(f"info POST /tokenize: {st} {r}")
    st, r = http.post("/detokenize", {"tokens": [1, 7, 24, 8, 25, 11]}, key="POST /detokenize")
    print(f"info POST /detokenize: {st} {r}")
    st, r = http.post("/generate", {"text": "3 + 4 =", "sampling_params": {"max_new_tokens": 3, "temperature": 0}},
                      key="generate_from_text")
    print(f"info text prompt: {st} {r.get('text') if isinstance(r, dict) else r!r} ids {r.get('output_ids') if isinstance(r, dict) else ''}; "
          f"hf encode = {tok('3 + 4 =')['input_ids']}")


def check_weight_update(http: Http, c: Case) -> None:
    m1, work, ids, lp0 = c.m1, c.work, c.ids, c.lp0
    # ---------------------------------------------------------------- weight update
    score = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True, "logprob_start_len": 0}
    http.post("/generate", score)  # cache the sequence under the old weights
    t = time.time()
    st, r = http.post("/update_weights_from_disk", {"model_path": str(work / "m1"), "weight_version": "step-1"},
                      key="update_weights_from_disk")
    dt = time.time() - t
    check(st == 200 and r.get("success") is True, f"update_weights_from_disk: {st} {r} in {dt:.2f}s")
    st, r = http.post("/generate", score, key="score_after_update")
    itl = r["meta_info"]["input_token_logprobs"]
    e_new = score_err(itl, hf_logprobs(m1, ids), ids, 0)
    e_old = score_err(itl, lp0, ids, 0)
    check(e_new < 1e-4, f"after update: logprobs match new weights (err {e_new:.2e}; vs old {e_old:.2e}); "
                        f"weight_version={r['meta_info'].get('weight_version')} cached_tokens={r['meta_info']['cached_tokens']}")
    st, r = http.get("/get_model_info", key="GET /get_model_info after update")
    print(f"info /get_model_info after update: {r}")
    st, r = http.get("/get_weight_version", key="GET /get_weight_version after update")
    print(f"info /get_weight_version after update: {st} {r}")
    st, r = http.post("/update_weights_from_disk", {"model_path": str(work / "does-not-exist")}, key="update_weights_bad_path")
    print(f"info update_weights_from_disk with a missing dir: {st} {r}")
    st, r = http.post("/generate", score)
    check(st == 200 and score_err(r["meta_info"]["input_token_logprobs"], hf_logprobs(m1, ids), ids, 0) < 1e-4,
          "after a failed update the server still serves the previous (new) weights")


def run_second_server_checks(http: Http, m0) -> None:
    import torch

    prompt = [1, 4, 5, 6, 7]
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 2, "temperature": 0},
            "return_hidden_states": True}
    st, r = http.post("/generate", body)
    hs = r["meta_info"].get("hidden_states")
    shapes = [[len(h), len(h[0]) if h and isinstance(h[0], list) else None] for h in hs] if hs else None
    RECORD["hidden_states_shapes"] = shapes
    with torch.no_grad():
        out = m0(torch.tensor([prompt + r["output_ids"]]), output_hidden_states=True)
    ref = out.hidden_states[-1][0]  # after the final norm in transformers' Llama
    err = float((torch.tensor(hs[0]) - ref[: len(prompt)]).abs().max())
    check(st == 200 and len(hs[0]) == len(prompt), f"--enable-return-hidden-states: shapes {shapes}, prompt rows vs hf last hidden err {err:.2e}")
    st, r2 = http.post("/generate", body)
    check(len(r2["meta_info"]["hidden_states"][0]) == len(prompt) and r2["meta_info"]["cached_tokens"] == 0,
          f"--disable-radix-cache: repeated prompt gets all {len(prompt)} rows again, cached_tokens={r2['meta_info']['cached_tokens']}")
    for n in (0, 1, 3):
        body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": n, "temperature": 0},
                "return_hidden_states": True}
        st, r = http.post("/generate", body, key=f"hidden_states_max_new_{n}")
        hs = r["meta_info"].get("hidden_states") if st == 200 else None
        shape = None if hs is None else [[len(h), len(h[0])] if h and isinstance(h[0], list) else [len(h)] for h in hs]
        RECORD[f"hidden_states_max_new_{n}"]["response"] = {"status": st, "shapes": shape, "output_ids": r.get("output_ids")}
        print(f"info return_hidden_states, max_new_tokens={n}: hidden_states shapes {shape}, output_ids {r.get('output_ids')}")
    body = {"input_ids": [[1, 4, 5], [1, 6]], "sampling_params": {"max_new_tokens": 2, "temperature": 0},
            "return_hidden_states": True}
    st, r = http.post("/generate", body)
    print(f"info return_hidden_states batch: {[[len(h) if isinstance(h[0], list) else 'H' for h in x['meta_info']['hidden_states']] for x in r]}")
