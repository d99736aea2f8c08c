"""The scoring checks of ``verify_sglang_cpu.py``: which position each log-prob belongs to, top-k and
per-id log-probs, temperature, batches, and the radix cache."""
from __future__ import annotations

from sglang_verify_harness import Case, Http, check, hf_logprobs, score_err


def check_scoring(http: Http, c: Case) -> None:
    import torch

    tok, m0, ids, P, L, lp0, watch = c.tok, c.m0, c.ids, c.P, c.L, c.lp0, c.watch
    # ---------------------------------------------------------------- a. scoring, off-by-one
    for start in [0, 1, P - 1, P, L - 1]:
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
                "return_logprob": True, "logprob_start_len": start, "top_logprobs_num": 3,
                "token_ids_logprob": watch}
        st, r = http.post("/generate", body, key=f"score_start_{start}")
        mi = r["meta_info"]
        itl = mi["input_token_logprobs"]
        nulls = [k for k, e in enumerate(itl) if e[0] is None]
        check(st == 200 and len(itl) == L - start,
              f"start={start}: len(input_token_logprobs)={len(itl)} == L-start={L - start}")
        check(nulls == [0], f"start={start}: null logprob only at entry 0 (nulls at {nulls})")
        check([e[1] for e in itl] == ids[start:], f"start={start}: entry k holds token ids[start+k]")
        err = score_err(itl, lp0, ids, start)
        check(err < 1e-4, f"start={start}: max |sglang - hf| input_token_logprobs = {err:.2e}")
        itop = mi["input_top_logprobs"]
        check(len(itop) == L - start and itop[0] is None, f"start={start}: input_top_logprobs[0] is None, len {len(itop)}")
        terr = 0.0
        for k in range(1, len(itop)):
            t = start + k
            ref = torch.topk(lp0[t - 1], 3)
            if k == 1:
                check([e[1] for e in itop[k]] == ref.indices.tolist(), f"start={start} k={k}: top-3 ids match hf")
            terr = max(terr, max(abs(e[0] - float(lp0[t - 1, e[1]])) for e in itop[k]))
        itid = mi["input_token_ids_logprobs"]
        check(itid[0] is None and all([e[1] for e in row] == watch for row in itid[1:]),
              f"start={start}: input_token_ids_logprobs[0] None, rows ordered as token_ids_logprob")
        ierr = max([0.0] + [abs(e[0] - float(lp0[start + k - 1, e[1]])) for k in range(1, len(itid)) for e in itid[k]])
        check(max(terr, ierr) < 1e-4, f"start={start}: top/token_ids logprob err {max(terr, ierr):.2e}")
        # output_* hold the next-token distribution after the whole sequence even with 0 new tokens
        otop = mi.get("output_top_logprobs")
        lp_next = hf_logprobs(m0, ids)[L - 1]
        if otop:
            oerr = max(abs(e[0] - float(lp_next[e[1]])) for e in otop[0])
            check(oerr < 1e-4 and mi["output_token_logprobs"] == [],
                  f"start={start}: output_top_logprobs has {len(otop)} row = next-token dist after seq (err {oerr:.2e}); output_token_logprobs == []")

    # logprob_start_len = L (nothing to score) and -1 (default)
    for start in [L, -1]:
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
                "return_logprob": True, "logprob_start_len": start}
        st, r = http.post("/generate", body, key=f"score_start_{start}")
        itl = r["meta_info"]["input_token_logprobs"] if st == 200 else None
        print(f"info start={start}: status {st}, input_token_logprobs={itl}")

    # temperature in the scoring request: are input logprobs scaled?
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 0.5},
            "return_logprob": True, "logprob_start_len": P - 1}
    st, r = http.post("/generate", body, key="score_temperature_0.5")
    itl = r["meta_info"]["input_token_logprobs"]
    e1 = score_err(itl, lp0, ids, P - 1)
    e05 = score_err(itl, hf_logprobs(m0, ids, 0.5), ids, P - 1)
    check(e1 < 1e-4, f"input logprobs ignore sampling temperature (err vs T=1: {e1:.2e}, vs T=0.5: {e05:.2e})")

    # return_text_in_logprobs
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
            "logprob_start_len": P - 1, "top_logprobs_num": 2, "return_text_in_logprobs": True}
    st, r = http.post("/generate", body, key="score_return_text")
    itl = r["meta_info"]["input_token_logprobs"]
    check(all(isinstance(e[2], str) for e in itl),
          f"return_text_in_logprobs: third element is text: {[e[2] for e in itl]} vs tok {tok.convert_ids_to_tokens(ids[P - 1:])}")


def check_batch_scoring(http: Http, c: Case) -> None:
    m0, ids, P, L = c.m0, c.ids, c.P, c.L
    # ---------------------------------------------------------------- batch scoring
    ids_b = [ids, [1, 11, 12, 13, 14, 15]]
    starts = [P - 1, 2]
    body = {"input_ids": ids_b, "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
            "return_logprob": True, "logprob_start_len": starts, "top_logprobs_num": 2}
    st, r = http.post("/generate", body, key="score_batch_list_starts")
    ok = st == 200 and isinstance(r, list) and len(r) == 2
    check(ok, f"batch scoring: list of input_ids lists -> list of {len(r) if isinstance(r, list) else r} responses, in order")
    if ok:
        for b in range(2):
            itl = r[b]["meta_info"]["input_token_logprobs"]
            err = score_err(itl, hf_logprobs(m0, ids_b[b]), ids_b[b], starts[b])
            check(len(itl) == len(ids_b[b]) - starts[b] and err < 1e-4,
                  f"batch[{b}]: per-request logprob_start_len {starts[b]}, len {len(itl)}, err {err:.2e}")
    body["logprob_start_len"] = 2
    st, r = http.post("/generate", body, key="score_batch_scalar_start")
    check(st == 200 and [len(x["meta_info"]["input_token_logprobs"]) for x in r] == [L - 2, 4],
          f"batch scoring with a scalar logprob_start_len applies it to every row: status {st}")
    body["sampling_params"] = [{"max_new_tokens": 0, "temperature": 1.0}] * 2
    st, r = http.post("/generate", body, key="score_batch_list_sampling_params")
    check(st == 200, f"batch with a list of sampling_params: status {st}")
    body = {"input_ids": ids_b, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
            "logprob_start_len": 2, "token_ids_logprob": [[2, 5], [7]]}
    st, r = http.post("/generate", body, key="score_batch_per_row_token_ids")
    check(st == 200 and [[e[1] for e in x["meta_info"]["input_token_ids_logprobs"][1]] for x in r] == [[2, 5], [7]],
          f"batch with per-row token_ids_logprob lists: status {st}")


def check_radix_cache(http: Http, c: Case) -> None:
    m0, prompt, ids, P, L, lp0 = c.m0, c.prompt, c.ids, c.P, c.L, c.lp0
    # ---------------------------------------------------------------- radix cache + logprobs
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
            "logprob_start_len": 0}
    http.post("/generate", body)
    st, r = http.post("/generate", body, key="score_repeat_radix")
    mi = r["meta_info"]
    check(len(mi["input_token_logprobs"]) == L and score_err(mi["input_token_logprobs"], lp0, ids, 0) < 1e-4,
          f"repeated identical scoring request (radix cache on): full logprobs still returned, cached_tokens={mi['cached_tokens']}")
    # generate once (caches prompt + output), then score a longer sequence sharing the prefix
    st, r = http.post("/generate", {"input_ids": prompt, "sampling_params": {"max_new_tokens": 4, "temperature": 0}})
    ext = prompt + r["output_ids"] + [3, 4]
    st, r = http.post("/generate", {"input_ids": ext, "sampling_params": {"max_new_tokens": 0},
                                    "return_logprob": True, "logprob_start_len": P - 1}, key="score_after_cached_prefix")
    mi = r["meta_info"]
    err = score_err(mi["input_token_logprobs"], hf_logprobs(m0, ext), ext, P - 1)
    check(len(mi["input_token_logprobs"]) == len(ext) - (P - 1) and err < 1e-4,
          f"scoring a sequence whose prefix is cached: cached_tokens={mi['cached_tokens']}, len ok, err {err:.2e}")
