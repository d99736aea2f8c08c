"""The scoring path to an SGLang-served model: one implementation for every user.

``SGLangTarget`` turns token sequences into ``SparseScores``: cache look-ups, requests batched
``batch_size`` sequences at a time, sent concurrently over the servers, each answer parsed and
checked (``protocol.parse_scoring``) before anything is returned. The OPD teacher scorer
(``scorer.py``) and the drafter plugin's target client both call ``score``; neither copies it.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from opdplug.errors import PreflightError, RemoteError, TrainingError

from .cache import ScoreCache
from .client import MalformedResponse, SGLangClient
from .protocol import SparseScores, answers_of, batch_payload, parse_scoring, scoring_payload


class SGLangTarget:
    """Log-probs of given tokens under a model served by SGLang."""

    def __init__(self, client: SGLangClient, *, batch_size: int = 8, cache: Optional[ScoreCache] = None,
                 vocab_size: Optional[int] = None):
        self.client = client
        self.vocab_size = vocab_size
        """The served model's vocabulary size (set by ``check_vocabulary``); see ``same_token``."""
        self.batch_size = max(1, batch_size)
        self.cache = cache
        self.scored_tokens = 0
        self.seconds = 0.0

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        rows: Sequence[Sequence[int]],
        score_from: Sequence[int],
        *,
        top_k: int = 0,
        chosen_ids: Optional[Sequence[Sequence[int]]] = None,
    ) -> list[SparseScores]:
        """Scores of ``rows[i][score_from[i]:]`` for every row, all or nothing.

        :param rows: token ids per sequence (prompt + completion, no padding).
        :param score_from: first scored position per row (>= 1).
        :param top_k: also return the model's top-k ids and log-probs per position.
        :param chosen_ids: per row, ids whose log-probs are wanted at every position.
        """
        t0 = time.perf_counter()
        chosen = [list(c) for c in chosen_ids] if chosen_ids is not None else [[] for _ in rows]
        results: list[Optional[SparseScores]] = [None] * len(rows)
        keys = [None] * len(rows)
        if self.cache is not None:
            for i, row in enumerate(rows):
                keys[i] = self.cache.key(row, score_from[i], top_k, chosen[i])
                results[i] = self.cache.get(keys[i])
        todo = [i for i in range(len(rows)) if results[i] is None]
        groups = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        payloads = [
            batch_payload([scoring_payload(rows[i], score_from[i], top_k=top_k, chosen_ids=chosen[i]) for i in g])
            for g in groups
        ]
        parsed: dict[int, list[SparseScores]] = {}

        def validate(response, g_index: int) -> None:
            group = groups[g_index]
            answers = answers_of(response, len(group))
            parsed[g_index] = [
                parse_scoring(a, rows[i], score_from[i], top_k=top_k, chosen_ids=chosen[i], vocab_size=self.vocab_size)
                for a, i in zip(answers, group)
            ]

        self.client.post_many("/generate", payloads, validate=validate)
        for g_index, group in enumerate(groups):
            for i, s in zip(group, parsed[g_index]):
                results[i] = s
                if self.cache is not None:
                    self.cache.put(keys[i], s)
        self.scored_tokens += sum(len(r) - f for r, f in zip(rows, score_from))
        self.seconds += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ start-up checks
    def model_info(self) -> dict:
        info = self.client.get("/get_model_info")
        return info if isinstance(info, dict) else {}

    def check_vocabulary(self, tokenizer, *, probe: int = 2048) -> None:
        """The server must speak ``tokenizer``'s ids: same size and same text for each id.

        Scores the sequence of probed ids with ``return_text_in_logprobs`` and compares the
        server's text for every id with ``tokenizer``'s: every id of vocabularies up to ``probe``
        entries, else ``probe`` evenly spread ids plus the special tokens. The last id (whose
        entry SGLang reports as id 0) is checked through ``/detokenize``, and the size by asking
        for the log-prob of the id one past the end, which a server with the same vocabulary refuses.
        One-line ``PreflightError`` on any difference.
        """
        V = len(tokenizer)
        if V <= probe:
            ids = list(range(V - 1))
        else:
            step = V / probe
            ids = sorted(({int(i * step) for i in range(probe)} | set(tokenizer.all_special_ids)) - {V - 1})
        url = self.client.urls[0]
        fix = "serve a model with the student's tokenizer"
        for start in range(0, len(ids), 512):
            chunk = ids[start : start + 512]
            seq = [chunk[0]] + chunk  # position 0 gets no entry; repeat it so every id is scored
            payload = scoring_payload(seq, 1)
            payload["return_text_in_logprobs"] = True
            try:
                answer = self.client.post("/generate", payload, url=url, failover=False)
                entries = answer["meta_info"]["input_token_logprobs"][-len(chunk):]
            except RemoteError:  # unreachable, not a vocabulary problem: say so as it is
                raise
            except TrainingError as exc:  # the server refused an id: its vocabulary is smaller
                raise PreflightError(
                    f"SGLang server {url} refused token ids {chunk[0]}..{chunk[-1]} of the student's vocabulary "
                    f"({str(exc).splitlines()[0]}); {fix}"
                ) from None
            except (KeyError, TypeError):
                raise PreflightError(f"SGLang server {url} answered a vocabulary probe without log-probs; is it SGLang?") from None
            for tok, entry in zip(chunk, entries):
                mine = tokenizer.decode([tok])
                if entry[1] != tok or (entry[2] != mine and entry[2] != tokenizer.convert_ids_to_tokens(tok)):
                    raise PreflightError(
                        f"SGLang server {url} and the student disagree on token id {tok} "
                        f"(server: id {entry[1]} {entry[2]!r}, student: {mine!r}); {fix}"
                    )
        last = self.client.post("/detokenize", {"tokens": [V - 1]}, url=url, failover=False)
        mine = tokenizer.decode([V - 1])
        if not isinstance(last, dict) or last.get("text") not in (mine, tokenizer.convert_ids_to_tokens(V - 1)):
            raise PreflightError(
                f"SGLang server {url} and the student disagree on the last token id {V - 1} "
                f"(server: {last.get('text') if isinstance(last, dict) else last!r}, student: {mine!r}); {fix}"
            )
        try:  # one past the student's last id must be out of the server's vocabulary (SGLang
            # range-checks token_ids_logprob against it; it does not check input ids)
            self.client.post("/generate", scoring_payload([0, 1], 1, chosen_ids=[V]), url=url, failover=False)
        except TrainingError:
            self.vocab_size = V
            return
        raise PreflightError(f"SGLang server {url} accepts token id {V}: its vocabulary is larger than the student's ({V}); {fix}")


__all__ = ["SGLangTarget", "MalformedResponse"]
