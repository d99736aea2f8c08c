"""SGLang's measured ``spec_accept_length`` beside opdplug's prediction, on the same prompts.

A drafter exported by ``opdplug drafter export`` and served by SGLang with speculative decoding
(``--speculative-algorithm EAGLE3`` or ``STANDALONE``, chain drafting with ``k`` steps) reports,
per request, ``meta_info.spec_verify_ct`` (target verify forwards) and ``completion_tokens``;
SGLang's ``spec_accept_length`` is their ratio (``tokenizer_manager.py`` in SGLang 0.5.23). The
first completion token comes from the prefill, not from a verify round, so the number comparable
to opdplug's acceptance length (tokens emitted per verify round, bonus included) is
``(completion_tokens - 1) / spec_verify_ct``; both are reported.

``compare`` sends the held-out prompts to the server, sums those counts, and runs opdplug's own
exact speculative decoding of the same prompts with the same drafter and target (acceptance
measured and predicted from 1 - TVD). Speculative decoding does not run on a CPU SGLang (see the
README), so this is the GPU check; nothing in the CPU suite depends on a server doing it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from opdplug.errors import ConfigError, RemoteError, TrainingError


@dataclass(frozen=True)
class ServedAcceptance:
    """What an SGLang server running speculative decoding reported over a set of requests."""

    requests: int
    """Requests sent."""
    completion_tokens: int
    """Tokens generated over all requests."""
    verify_forwards: int
    """Sum of ``spec_verify_ct``: target verify forwards."""
    spec_accept_length: float
    """``completion_tokens / verify_forwards``: SGLang's own figure (counts the prefill's token)."""
    accept_length_per_round: float
    """``(completion_tokens - requests) / verify_forwards``: tokens per verify round, comparable
    to opdplug's acceptance length."""
    completions: list
    """Generated ids per request (EOS included when produced)."""

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(answers: Sequence[Any], *, budgets: Sequence[int], eos_id: int, url: str = "the server") -> ServedAcceptance:
    """Counts of ``/generate`` answers of a speculative-decoding server; a one-line
    ``ConfigError`` when the server is not doing speculative decoding."""
    from opdplug_sglang.protocol import parse_sample

    completions, verify = [], 0
    for i, (answer, budget) in enumerate(zip(answers, budgets)):
        sample = parse_sample(answer, max_new_tokens=budget, eos_id=eos_id)
        ct = answer["meta_info"].get("spec_verify_ct")
        if not isinstance(ct, int) or ct < 1:
            raise ConfigError(
                f"{url} reported no spec_verify_ct for request {i}: it is not running speculative decoding; start it "
                f"with --speculative-algorithm EAGLE3 (or STANDALONE) --speculative-draft-model-path EXPORT_DIR "
                f"--speculative-num-steps K --speculative-eagle-topk 1 --speculative-num-draft-tokens K+1"
            )
        completions.append(sample.ids)
        verify += ct
    tokens = sum(len(c) for c in completions)
    return ServedAcceptance(
        requests=len(completions), completion_tokens=tokens, verify_forwards=verify,
        spec_accept_length=tokens / verify, accept_length_per_round=(tokens - len(completions)) / verify,
        completions=completions,
    )


def check_settings(info: Any, k: int, url: str = "the server") -> dict:
    """The speculative settings in an SGLang ``/server_info`` answer (flat server-args keys), or
    a one-line ``ConfigError`` when they cannot be compared with opdplug's chain of ``k`` drafts.
    Answers without those keys (other servers) give ``{}``: nothing to check."""
    if not isinstance(info, dict) or "speculative_algorithm" not in info:
        return {}
    settings = {key: info.get(f"speculative_{key}") for key in ("algorithm", "num_steps", "eagle_topk", "num_draft_tokens")}
    if not settings["algorithm"]:
        raise ConfigError(f"{url} runs without speculative decoding; start it with --speculative-algorithm EAGLE3 "
                          f"(or STANDALONE) --speculative-draft-model-path EXPORT_DIR")
    if settings["eagle_topk"] not in (None, 1):
        raise ConfigError(f"{url} drafts a tree (--speculative-eagle-topk {settings['eagle_topk']}); opdplug predicts "
                          f"chain drafting: restart it with --speculative-eagle-topk 1")
    if settings["num_steps"] not in (None, k):
        raise ConfigError(f"{url} drafts {settings['num_steps']} tokens per round (--speculative-num-steps); pass "
                          f"--k {settings['num_steps']} or restart it with --speculative-num-steps {k}")
    return settings


def served_acceptance(url: str, prompts: Sequence[Sequence[int]], budgets: Sequence[int], *, temperature: float,
                      eos_id: int, k: int, timeout_s: float = 600.0, retry_budget_s: float = 30.0) -> ServedAcceptance:
    """Check the server's speculative settings against ``k`` (``check_settings``), send every
    prompt to ``url`` (``/generate``, exact ids) and summarize the answers; a request still
    failing ``retry_budget_s`` after its first failure stops it (``RemoteError``)."""
    from opdplug_sglang.client import RetryPolicy, SGLangClient
    from opdplug_sglang.protocol import parse_sample, sampling_payload

    client = SGLangClient([url], RetryPolicy(timeout_s=timeout_s, budget_s=retry_budget_s), max_concurrency=8)
    try:
        info = client.get("/server_info")
    except RemoteError:  # unreachable: stop here, in one line
        raise
    except TrainingError:  # a 4xx: a server without that endpoint; its answers are checked below
        info = None
    check_settings(info, k, url)
    payloads = [sampling_payload(p, max_new_tokens=b, temperature=temperature, top_p=1.0, eos_id=eos_id)
                for p, b in zip(prompts, budgets)]
    # A malformed answer is retried like a failed request (and ends as one line, not a traceback).
    answers = client.post_many("/generate", payloads,
                               validate=lambda a, i: parse_sample(a, max_new_tokens=budgets[i], eos_id=eos_id))
    return summarize(answers, budgets=budgets, eos_id=eos_id, url=url)
