"""The ``llm_judge`` locator: an OpenAI-compatible chat endpoint names the first wrong step."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

from opdplug.errors import TrainingError

from ..episodes import Episode
from .base import LocatorDeps, Start, start_turns, student_turns


class JudgeUnreachable(TrainingError):
    """The LLM judge's endpoint could not be reached (after the retries)."""


JUDGE_SYSTEM = (
    "You check the steps of an agent that solves a task with tool calls. A step is wrong if its "
    "call is invalid or if it does not make the best possible progress toward solving the task "
    "from the state before it. Find the earliest wrong step. Reply with JSON only, exactly "
    '{"first_error": N} where N is the number of the earliest wrong step, or {"first_error": null} '
    "if every step is right."
)


def judge_messages(episode: Episode, start: int = 0) -> list[dict]:
    """The chat messages the judge gets: the task (first observation), then every step with its
    number, action and the environment's reply."""
    lines = [f"Task: {episode.turns[0].observation if episode.turns else episode.final_observation}", "", "Steps:"]
    for t, turn in enumerate(episode.turns):
        after = episode.turns[t + 1].observation if t + 1 < episode.num_turns else episode.final_observation
        lines.append(f"step {t}: action: {turn.action_text}")
        lines.append(f"result: {after}")
    outcome = "solved" if episode.success else "not solved"
    lines += ["", f"The task was {outcome} after step {episode.num_turns - 1}."]
    if start > 0:
        lines.append(f"Steps 0 to {start - 1} are known to be right; look from step {start} on.")
    lines.append('Answer with {"first_error": N} or {"first_error": null}.')
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def parse_judge_reply(content: Any, num_steps: int) -> tuple[Optional[int], str]:
    """``(index, "")`` for a valid reply (index None: no error), else ``(None, reason)``.

    Strict: the whole reply (surrounding whitespace and one enclosing Markdown code fence
    aside) must be the JSON object ``{"first_error": <int in 0..num_steps-1 or null>}``.
    """
    if not isinstance(content, str):
        return None, f"reply content is {type(content).__name__}, not text"
    text = content.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        text = text[text.index("\n") + 1:-3].strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"reply is not JSON ({exc.msg}): {content[:60]!r}"
    if not isinstance(value, dict) or set(value) != {"first_error"}:
        return None, f"reply is not an object with exactly the key first_error: {content[:60]!r}"
    index = value["first_error"]
    if index is None:
        return None, ""
    if isinstance(index, bool) or not isinstance(index, int):
        return None, f"first_error is {type(index).__name__}, not an integer or null"
    if not 0 <= index < num_steps:
        return None, f"first_error = {index} is outside steps 0..{num_steps - 1}"
    return index, ""


@dataclass(frozen=True)
class LLMJudgeLocator:
    """``llm_judge``: ask an OpenAI-compatible chat endpoint (SGLang's, vLLM's, OpenAI's) for the
    earliest wrong step, one request per episode, with ``urllib`` only.

    The server's token counts (the response's ``usage``) add up in ``judge_prompt_tokens`` and
    ``judge_completion_tokens``. A reply that is not the strict JSON ``{"first_error": ...}``, names a step out of range or a
    step that is not a checkable student turn counts as "no error found" (None) and its reason
    goes to ``deps.notes`` (``judge_failures`` counts them). An endpoint that cannot be reached
    after ``retries`` retries raises ``JudgeUnreachable`` (one line naming the URL); HTTP 4xx
    other than 429 fails at once.
    """

    name: ClassVar[str] = "llm_judge"
    """The name it is registered under."""
    url: str = "http://127.0.0.1:30000/v1/chat/completions"
    """The full endpoint URL."""
    model: str = "default"
    """The ``model`` field of the request (the served model's name)."""
    timeout_s: float = 60.0
    """Seconds to wait for one reply."""
    retries: int = 2
    """Further tries after a failed request (connection errors, timeouts, 5xx, 429)."""
    retry_wait_s: float = 1.0
    """Wait before the first retry; doubled each time."""
    max_tokens: int = 32
    """Reply budget."""
    temperature: float = 0.0
    """Sampling temperature of the judge."""
    json_mode: bool = False
    """Send ``response_format = {"type": "json_object"}`` (servers that support it)."""
    json_schema: bool = False
    """Send ``response_format`` as a JSON schema that allows only ``{"first_error": N}`` with N one
    of the episode's checkable steps or null (constrained decoding: SGLang, vLLM, OpenAI); wins
    over ``json_mode``."""
    api_key_env: str = ""
    """Name of an environment variable holding a bearer token ("" sends none)."""

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"llm_judge url must start with http:// or https://, got {self.url!r}")
        if self.retries < 0 or self.timeout_s <= 0 or self.retry_wait_s < 0 or self.max_tokens < 1:
            raise ValueError("llm_judge needs retries >= 0, timeout_s > 0, retry_wait_s >= 0, max_tokens >= 1")

    def request(self, messages: list[dict], steps: Sequence[int] = ()) -> dict:
        """POST one chat completion (``steps``: the answers the JSON schema allows besides null,
        with ``json_schema``); the decoded JSON response, or raise."""
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.json_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "first_error", "schema": {
                "type": "object", "properties": {"first_error": {"enum": [*map(int, steps), None]}},
                "required": ["first_error"], "additionalProperties": False}}}
        elif self.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if self.api_key_env and os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_wait_s * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                break
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    raise JudgeUnreachable(f"llm_judge: {self.url} answered {last}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
        else:
            raise JudgeUnreachable(f"llm_judge: cannot reach {self.url}: {last} ({self.retries + 1} tries)")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"_malformed": raw[:60].decode(errors="replace")}

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        out: list[Optional[int]] = []
        for episode, s in zip(episodes, start_turns(start, len(episodes))):
            check = student_turns(episode, s)
            if not check:
                out.append(None)
                continue
            response = self.request(judge_messages(episode, s), check)
            deps.stats["judge_calls"] += 1
            usage = response.get("usage") if isinstance(response, dict) else None
            if isinstance(usage, dict):  # the server's own count (OpenAI's usage field)
                deps.stats["judge_prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                deps.stats["judge_completion_tokens"] += int(usage.get("completion_tokens") or 0)
            try:
                content = response["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                content = None
                index, reason = None, f"response is not a chat completion: {str(response)[:60]!r}"
            else:
                index, reason = parse_judge_reply(content, episode.num_turns)
            if not reason and index is not None and index not in check:
                index, reason = None, f"first_error = {index} is not a student step from {s} on"
            if reason:
                deps.stats["judge_failures"] += 1
                deps.notes.append(f"llm_judge ({episode.env} seed {episode.seed}): {reason}")
            out.append(index)
        return deps.record(out)
