"""Auxiliary hidden states and next-token distributions of token sequences from an SGLang server:
what an EAGLE-3 head trains on, without loading the target a second time.

SGLang 0.5.23 has a capture-only mode: the target captures the EAGLE-3 auxiliary hidden states
without any draft model, and ``/generate`` requests with ``return_hidden_states`` get their
concatenation in place of the last layer's. The server must be started with::

    --enable-return-hidden-states --enable-return-aux-hidden-states --speculative-algorithm EAGLE3
    --return-aux-hidden-state-layer-ids ID [ID ...] --disable-radix-cache

(``--speculative-algorithm`` only names the capture convention there: SGLang resets it to None
and runs no draft; this works on its CPU engine, where speculative decoding itself does not.)
Layer id ``k`` captures the residual stream ENTERING layer ``k + 1``, i.e. Hugging Face
``hidden_states[k + 1]`` (Llama, Qwen2 and Qwen3 alike), concatenated in ascending layer order;
ids must be ``>= 0`` (the embeddings, HF index 0, cannot be asked for in this mode). Without the
radix-cache flag, a sequence whose prefix is cached gets only its uncached rows back.

One request per sequence (batched ``batch_size`` at a time): ``input_ids`` = the sequence,
``max_new_tokens = 1`` (with 0 SGLang returns no hidden states), ``return_logprob`` from position 0
with the top-1 id and the log-probs of the requested ids (``token_ids_logprob``, e.g. a draft
vocabulary). The answer gives, for a sequence of ``L`` tokens:

* ``hidden_states[0]``: ``[L, n_aux * H]``, row ``t`` describing token ``t``;
* ``input_*_logprobs[k]`` (``k = 1 .. L-1``): the distribution at position ``k - 1`` (predicting
  token ``k``); ``output_*_logprobs[0]``: the distribution at position ``L - 1``, after the whole
  sequence (at the sampling temperature, so requests sample at temperature 1).

Costs, on the wire: ``n_aux * H`` floats per token, plus one entry per requested id and token
(a 32k draft vocabulary is 32k entries per token); the server's JSON encoding dominates for real
widths. ``check_capture_server`` reads ``/server_info`` first and refuses, in one line, a server
that would answer something else (no aux capture, other layers, radix cache on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from opdplug.errors import PreflightError

from .client import MalformedResponse, SGLangClient
from .protocol import _entry, answers_of, batch_payload, parse_scoring, scoring_payload

SERVER_FLAGS = ("--enable-return-hidden-states", "--enable-return-aux-hidden-states", "--speculative-algorithm", "EAGLE3",
                "--disable-radix-cache")
"""The server flags capture needs, besides ``--return-aux-hidden-state-layer-ids`` (``server_flags``)."""


def server_flags(layer_ids: Sequence[int]) -> list[str]:
    """Every ``sglang.launch_server`` flag for capturing SGLang layer ids ``layer_ids``."""
    return [*SERVER_FLAGS, "--return-aux-hidden-state-layer-ids", *[str(int(i)) for i in layer_ids]]


@dataclass(frozen=True)
class SequenceFeatures:
    """What the server says about one sequence of ``L`` tokens."""

    features_L_A: torch.Tensor
    """The auxiliary hidden states, concatenated in layer order; row t describes token t (float32)."""
    chosen_logprobs_L_C: torch.Tensor
    """Log-probs (over the whole vocabulary) of the requested ids, in the order requested, of the
    distribution at each position: row t predicts token t + 1 (row L - 1: the token after the
    sequence) (float32)."""
    argmax_L: torch.Tensor
    """The most likely next token over the whole vocabulary at each position (long)."""
    token_logprobs_L: torch.Tensor
    """Log-prob of each token given the ones before it; 0 at t = 0 (float32)."""


def features_payload(ids: Sequence[int], chosen_ids: Sequence[int]) -> dict:
    """The ``/generate`` request for one sequence (see the module docstring)."""
    if len(ids) < 2:
        raise ValueError(f"a sequence needs at least 2 tokens, got {len(ids)}")
    payload = scoring_payload(ids, 1, top_k=1, chosen_ids=chosen_ids)
    # One new token: with max_new_tokens = 0 SGLang returns no hidden states at all. At
    # temperature 1 the output row's log-probs are log_softmax(logits), like the input rows'.
    payload["sampling_params"] = {"max_new_tokens": 1, "temperature": 1.0}
    payload["return_hidden_states"] = True
    return payload


def _output_row(meta: dict, key: str, what: str) -> list:
    rows = meta.get(key)
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
        raise MalformedResponse(f"{what} is missing: the server gave no distribution after the sequence")
    return rows[0]


def parse_features(answer: Any, ids: Sequence[int], chosen_ids: Sequence[int], width: int,
                   vocab_size: Optional[int] = None) -> SequenceFeatures:
    """``SequenceFeatures`` of ``ids`` from one answer; ``MalformedResponse`` when anything is
    missing, misaligned (token ids are checked position by position) or of the wrong shape."""
    L = len(ids)
    scores = parse_scoring(answer, ids, 1, top_k=1, chosen_ids=chosen_ids, vocab_size=vocab_size)
    meta = answer["meta_info"]
    blocks = meta.get("hidden_states")
    if not isinstance(blocks, list) or not blocks or not isinstance(blocks[0], list):
        raise MalformedResponse("the answer has no hidden_states: start the server with --enable-return-hidden-states")
    block = blocks[0]
    if len(block) != L or any(not isinstance(row, list) or len(row) != width for row in block):
        shape = (len(block), len(block[0]) if block and isinstance(block[0], list) else None)
        raise MalformedResponse(
            f"hidden_states[0] is {shape}, expected ({L}, {width}) (cached_tokens {meta.get('cached_tokens')}: "
            f"a cached prefix drops rows; serve with --disable-radix-cache)"
        )
    features = torch.tensor(block, dtype=torch.float32)
    if not bool(torch.isfinite(features).all()):
        raise MalformedResponse("hidden_states hold NaN or inf")
    top = _output_row(meta, "output_top_logprobs", "output_top_logprobs")
    _, last_argmax = _entry(top[0] if top else None, "output_top_logprobs[0][0]")
    got = {}
    for k, entry in enumerate(_output_row(meta, "output_token_ids_logprobs", "output_token_ids_logprobs")):
        lp, tok = _entry(entry, f"output_token_ids_logprobs[0][{k}]")
        got[tok] = lp
    try:
        last = torch.tensor([got[int(i)] for i in chosen_ids], dtype=torch.float32)
    except KeyError as exc:
        raise MalformedResponse(f"output_token_ids_logprobs[0] lacks token {exc}") from None
    chosen = torch.cat([scores.chosen_logprobs_T_C, last[None]]) if chosen_ids else torch.zeros(L, 0)
    argmax = torch.cat([scores.topk_ids_T_K[:, 0], torch.tensor([last_argmax])])
    token_lp = torch.cat([torch.zeros(1), scores.token_logprobs_T])
    return SequenceFeatures(features, chosen, argmax, token_lp)


def check_capture_server(info: Any, layer_ids: Sequence[int], url: str = "") -> None:
    """One-line ``PreflightError`` unless a ``/server_info`` answer is a server that captures
    exactly SGLang layer ids ``layer_ids`` and returns every row of every sequence."""
    if not isinstance(info, dict):
        raise PreflightError(f"SGLang server {url} answered /server_info with {type(info).__name__}; is it SGLang 0.5.23 or later?")
    want = [int(i) for i in layer_ids]
    fix = "start it with " + " ".join(server_flags(want))
    if not info.get("enable_return_hidden_states") or not info.get("enable_return_aux_hidden_states") \
            or info.get("aux_hidden_state_capture") != "eagle3":
        raise PreflightError(f"SGLang server {url} does not return EAGLE-3 auxiliary hidden states; {fix}")
    if list(info.get("return_aux_hidden_state_layer_ids") or []) != want:
        raise PreflightError(
            f"SGLang server {url} captures layer ids {info.get('return_aux_hidden_state_layer_ids')}, the head reads {want} "
            f"(None means SGLang's default, which collides on shallow targets); {fix}"
        )
    if not info.get("disable_radix_cache"):
        raise PreflightError(f"SGLang server {url} has its radix cache on: a repeated prefix would lose its hidden-state rows; {fix}")


class SGLangFeatureSource:
    """Auxiliary hidden states and next-token distributions of sequences, from SGLang servers."""

    def __init__(self, client: SGLangClient, layer_ids: Sequence[int], width: int, *, batch_size: int = 8,
                 vocab_size: Optional[int] = None):
        """
        :param layer_ids: SGLang aux layer ids the servers capture (HF ``hidden_states`` index - 1).
        :param width: ``len(layer_ids) * hidden_size``, checked on every answer.
        :param vocab_size: the served vocabulary's size (for SGLang's report of the last id, see
            ``protocol.same_token``).
        """
        self.client = client
        self.layer_ids = [int(i) for i in layer_ids]
        self.width = int(width)
        self.batch_size = max(1, int(batch_size))
        self.vocab_size = vocab_size
        self.tokens = 0
        """Tokens whose features were fetched (for cost per token)."""

    def check(self) -> None:
        """Check every server's capture settings (``check_capture_server``)."""
        for url in self.client.urls:
            check_capture_server(self.client.get("/server_info", url=url, failover=False), self.layer_ids, url)

    def fetch(self, rows: Sequence[Sequence[int]], chosen_ids: Sequence[int]) -> list[SequenceFeatures]:
        """``SequenceFeatures`` of every row (token ids, no padding), all or nothing."""
        rows = [[int(t) for t in row] for row in rows]
        chosen = [int(i) for i in chosen_ids]
        groups = [list(range(s, min(s + self.batch_size, len(rows)))) for s in range(0, len(rows), self.batch_size)]
        payloads = [batch_payload([features_payload(rows[i], chosen) for i in g]) for g in groups]
        parsed: dict[int, list[SequenceFeatures]] = {}

        def validate(response, g_index: int) -> None:
            group = groups[g_index]
            parsed[g_index] = [parse_features(a, rows[i], chosen, self.width, self.vocab_size)
                               for a, i in zip(answers_of(response, len(group)), group)]

        self.client.post_many("/generate", payloads, validate=validate)
        self.tokens += sum(len(r) for r in rows)
        return [s for g_index in range(len(groups)) for s in parsed[g_index]]


__all__ = ["SGLangFeatureSource", "SequenceFeatures", "check_capture_server", "features_payload", "parse_features",
           "server_flags"]
