"""SGLang's native ``/generate`` API: the requests opdplug sends and how answers map back.

Pure functions, no I/O, so every rule here is tested against recorded server answers.

Scoring a sequence ``ids`` (prompt + completion, length L) from position ``P`` on (the first
completion token) is a request with ``max_new_tokens = 0`` and ``logprob_start_len = P - 1``.
SGLang answers ``meta_info.input_token_logprobs`` as ``[logprob, token_id, text]`` entries for
positions ``P - 1 .. L - 1``; the entry of the first of them is ``null`` (no logits inside the
request predict it). That is the off-by-one: asking from ``P`` would lose token ``P``'s score.
``input_top_logprobs`` and ``input_token_ids_logprobs`` follow the same layout with a list per
position. The parser does not trust the layout blindly: it finds where the entries start from
their count, then checks that every entry's token id is the id at that position, so a server
that shifted its answer by one is caught as a malformed response (and retried, then reported)
instead of silently training on the neighbour's scores.

One quirk of SGLang 0.5.23 is accepted knowingly: in ``input_token_logprobs`` it reports the id
of the LAST vocabulary entry (``vocab_size - 1``) as ``0`` (a clip meant for image-placeholder
ids, off by one), while the log-prob itself is that of the real token. ``same_token`` allows
exactly that substitution and nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .client import MalformedResponse


# ----------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class SparseScores:
    """A teacher's scores of positions ``score_from .. L-1`` of one sequence (``T`` positions)."""

    token_logprobs_T: torch.Tensor
    """Log-prob of the token at each scored position (float32)."""
    topk_ids_T_K: Optional[torch.Tensor] = None
    """The teacher's top-k ids at each scored position (long), or None when k = 0."""
    topk_logprobs_T_K: Optional[torch.Tensor] = None
    """Their log-probs (float32), descending."""
    chosen_logprobs_T_C: Optional[torch.Tensor] = None
    """Log-probs of the requested ``token_ids_logprob`` ids, in the order requested (float32),
    at every scored position; None when none were requested."""

    @property
    def num_positions(self) -> int:
        return int(self.token_logprobs_T.shape[0])


def scoring_payload(
    ids: Sequence[int], score_from: int, *, top_k: int = 0, chosen_ids: Sequence[int] = (),
) -> dict:
    """The ``/generate`` request scoring ``ids[score_from:]`` (``score_from >= 1``)."""
    if not 1 <= score_from < len(ids):
        raise ValueError(f"score_from must be in [1, {len(ids) - 1}], got {score_from}")
    payload = {
        "input_ids": [int(i) for i in ids],
        "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
        "return_logprob": True,
        "logprob_start_len": score_from - 1,
        "return_text_in_logprobs": False,
        "stream": False,
    }
    if top_k > 0:
        payload["top_logprobs_num"] = int(top_k)
    if chosen_ids:
        payload["token_ids_logprob"] = [int(i) for i in chosen_ids]
    return payload


def batch_payload(payloads: Sequence[dict]) -> dict:
    """Several single-sequence requests as one batched request.

    ``input_ids`` becomes a list per sequence; every other field is sent once when all
    sequences agree on it (SGLang requires that for the boolean flags) and as a per-sequence
    list otherwise (``logprob_start_len``, ``top_logprobs_num``, ``token_ids_logprob``,
    ``sampling_params``).
    """
    if len(payloads) == 1:
        return payloads[0]
    keys = sorted({k for p in payloads for k in p})
    out: dict[str, Any] = {"input_ids": [p["input_ids"] for p in payloads]}
    for key in keys:
        if key == "input_ids":
            continue
        values = [p.get(key) for p in payloads]
        if all(v == values[0] for v in values):
            out[key] = values[0]
        elif key in ("logprob_start_len", "top_logprobs_num", "token_ids_logprob", "sampling_params"):
            out[key] = [v if v is not None else (0 if key == "top_logprobs_num" else None) for v in values]
        else:
            raise ValueError(f"{key} differs between the sequences of one batched request")
    return out


def _entry(entry: Any, what: str) -> tuple[float, int]:
    if not isinstance(entry, (list, tuple)) or len(entry) < 2:
        raise MalformedResponse(f"{what} is {entry!r}, not [logprob, token_id, ...]")
    lp, tok = entry[0], entry[1]
    if lp is None or not isinstance(tok, int) or isinstance(lp, bool):
        raise MalformedResponse(f"{what} is {entry!r}")
    lp = float(lp)
    if math.isnan(lp) or lp > 1e-4:
        raise MalformedResponse(f"{what} has log-prob {lp}")
    return lp, tok


def same_token(reported: int, expected: int, vocab_size: Optional[int]) -> bool:
    """Whether an ``input_token_logprobs`` entry's id stands for ``expected`` (see the module
    docstring for SGLang's report of the last vocabulary id as 0)."""
    return reported == expected or (vocab_size is not None and expected == vocab_size - 1 and reported == 0)


def parse_scoring(
    answer: Any, ids: Sequence[int], score_from: int, *, top_k: int = 0, chosen_ids: Sequence[int] = (),
    vocab_size: Optional[int] = None,
) -> SparseScores:
    """``SparseScores`` for ``ids[score_from:]`` from one ``/generate`` answer (a dict).

    Raises ``MalformedResponse`` when the answer is truncated, misaligned, or not finite.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("meta_info"), dict):
        raise MalformedResponse("the answer has no meta_info")
    meta = answer["meta_info"]
    entries = meta.get("input_token_logprobs")
    L, T = len(ids), len(ids) - score_from
    if not isinstance(entries, list) or len(entries) < T:
        raise MalformedResponse(f"input_token_logprobs has {len(entries) if isinstance(entries, list) else entries!r} entries for {T} positions")
    first = L - len(entries)  # the position of entries[0]: entries run to the last token
    if first < 0:
        raise MalformedResponse(f"input_token_logprobs has {len(entries)} entries for a sequence of {L}")
    skip = score_from - first
    token_lp = []
    for j in range(skip, len(entries)):
        lp, tok = _entry(entries[j], f"input_token_logprobs[{j}]")
        if not same_token(tok, ids[first + j], vocab_size):
            raise MalformedResponse(
                f"input_token_logprobs[{j}] is for token {tok}, but position {first + j} holds {ids[first + j]}"
            )
        token_lp.append(lp)
    out = {"token_logprobs_T": torch.tensor(token_lp, dtype=torch.float32)}
    if top_k > 0:
        tops = meta.get("input_top_logprobs")
        if not isinstance(tops, list) or len(tops) != len(entries):
            raise MalformedResponse("input_top_logprobs is missing or not aligned with input_token_logprobs")
        ids_T_K = torch.zeros(T, top_k, dtype=torch.long)
        lp_T_K = torch.empty(T, top_k, dtype=torch.float32)
        for t, j in enumerate(range(skip, len(entries))):
            row = tops[j]
            if not isinstance(row, list) or len(row) < top_k:
                raise MalformedResponse(f"input_top_logprobs[{j}] has {len(row) if isinstance(row, list) else row!r} entries, asked {top_k}")
            for k in range(top_k):
                lp_T_K[t, k], ids_T_K[t, k] = _entry(row[k], f"input_top_logprobs[{j}][{k}]")
        out["topk_ids_T_K"], out["topk_logprobs_T_K"] = ids_T_K, lp_T_K
    if chosen_ids:
        rows = meta.get("input_token_ids_logprobs")
        if not isinstance(rows, list) or len(rows) != len(entries):
            raise MalformedResponse("input_token_ids_logprobs is missing or not aligned with input_token_logprobs")
        C = len(chosen_ids)
        lp_T_C = torch.empty(T, C, dtype=torch.float32)
        for t, j in enumerate(range(skip, len(entries))):
            row = rows[j]
            if not isinstance(row, list) or len(row) != C:
                raise MalformedResponse(f"input_token_ids_logprobs[{j}] has {len(row) if isinstance(row, list) else row!r} entries, asked {C}")
            got = {}
            for k in range(C):
                lp, tok = _entry(row[k], f"input_token_ids_logprobs[{j}][{k}]")
                got[tok] = lp
            try:
                lp_T_C[t] = torch.tensor([got[int(i)] for i in chosen_ids])
            except KeyError as exc:
                raise MalformedResponse(f"input_token_ids_logprobs[{j}] lacks token {exc}") from None
        out["chosen_logprobs_T_C"] = lp_T_C
    return SparseScores(**out)


def answers_of(response: Any, n: int) -> list:
    """The per-sequence answers of a (possibly batched) ``/generate`` response."""
    if n == 1 and isinstance(response, dict):
        return [response]
    if not isinstance(response, list) or len(response) != n:
        got = len(response) if isinstance(response, list) else type(response).__name__
        raise MalformedResponse(f"expected {n} answers, got {got}")
    return response


# ----------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Sample:
    """One completion sampled by the server."""

    ids: list
    """The generated token ids, exactly (EOS included when the model stopped on it)."""
    logprobs: list
    """The sampling log-prob of each generated token."""
    truncated: bool
    """True when generation stopped at ``max_new_tokens`` without EOS."""


def sampling_payload(
    prompt_ids: Sequence[int], *, max_new_tokens: int, temperature: float, top_p: float, eos_id: int, seed: Optional[int] = None,
) -> dict:
    """The ``/generate`` request sampling a completion of ``prompt_ids``."""
    params = {
        "max_new_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "stop_token_ids": [int(eos_id)],
        "ignore_eos": False,
        "no_stop_trim": True,
        "skip_special_tokens": False,
    }
    if seed is not None:
        params["sampling_seed"] = int(seed)
    return {
        "input_ids": [int(i) for i in prompt_ids],
        "sampling_params": params,
        "return_logprob": True,
        "logprob_start_len": -1,
        "return_text_in_logprobs": False,
        "stream": False,
    }


def parse_sample(answer: Any, *, max_new_tokens: int, eos_id: int) -> Sample:
    """A ``Sample`` from one ``/generate`` answer; the token ids come from ``output_ids`` and
    are checked against the ids of ``output_token_logprobs``."""
    if not isinstance(answer, dict) or not isinstance(answer.get("meta_info"), dict):
        raise MalformedResponse("the answer has no meta_info")
    meta = answer["meta_info"]
    entries = meta.get("output_token_logprobs")
    if not isinstance(entries, list):
        raise MalformedResponse("output_token_logprobs is missing")
    ids = answer.get("output_ids")
    logprobs, logged_ids = [], []
    for j, e in enumerate(entries):
        lp, tok = _entry(e, f"output_token_logprobs[{j}]")
        logprobs.append(lp)
        logged_ids.append(tok)
    if ids is None:
        ids = logged_ids
    if list(ids) != logged_ids:
        raise MalformedResponse(f"output_ids {list(ids)[:8]}... disagree with output_token_logprobs ids {logged_ids[:8]}...")
    if len(ids) > max_new_tokens:
        raise MalformedResponse(f"{len(ids)} tokens generated, at most {max_new_tokens} asked")
    finish = meta.get("finish_reason") or {}
    stopped = bool(ids) and ids[-1] == eos_id
    if isinstance(finish, dict) and finish.get("type") == "stop" and not stopped:
        # The server trimmed the stop token: put it back so the ids are exactly what was sampled.
        raise MalformedResponse("finish_reason is 'stop' but the EOS token is not in output_ids (no_stop_trim ignored?)")
    return Sample(ids=list(ids), logprobs=logprobs, truncated=not stopped)
