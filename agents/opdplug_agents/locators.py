"""Earliest-error locators: which turn of an episode is the student's first mistake.

One interface, chosen by name (``LOCATORS``, ``build_locator``; the ``agent_score`` sampler's
``locator`` / ``locator_options`` options)::

    locator.locate(episodes, deps, start=None) -> list[Optional[int]]

gives, per episode, the index of the first wrong *student* turn (None: no error found). Turns
written by a teacher or an expert are taken as given and never flagged; ``start`` (an int, or
one per episode) skips turns before it, which a caller has already verified (SCoRe's repair
loop passes ``k + 1`` after rewriting turn k). ``deps`` (``LocatorDeps``) carries what a
locator may use (tokenizer, teacher, sampling settings) and collects counters in
``deps.stats`` and reasons in ``deps.notes``.

============================  ===============================================================
``expert``                    exact: replay the environment; a turn is wrong iff
                              ``env.is_optimal(action)`` is false there (invalid calls, bumps,
                              wasted or wrong calls; any optimal tie is right).
``teacher_logprob``           the teacher scores the exact action ids; the first student turn
                              whose ``reduce`` (mean or min) per-token log-prob is below
                              ``threshold``.
``teacher_rollouts``          the teacher plays ``n`` continuations from every prefix; the first
                              student turn k whose action drops the teacher's success rate by at
                              least ``margin`` (rule below).
``llm_judge``                 an OpenAI-compatible ``/v1/chat/completions`` endpoint reads the
                              numbered steps and answers ``{"first_error": <int or null>}``
                              (the SCoRe paper's locator). Standard library only.
============================  ===============================================================

Counters (``deps.stats``): ``episodes`` searched, ``located`` errors found,
``teacher_actions`` (actions the teacher model generated, one per action), ``expert_actions``,
``teacher_scorings`` (teacher forward passes, one per scored episode), ``judge_calls`` (HTTP
requests answered), ``judge_failures`` (unusable replies, each with a reason in ``deps.notes``).
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import torch

from opdplug_local import sampling
from opdplug.errors import ConfigError, TrainingError

from .envs import ENVS
from .rollout import PRODUCERS, Episode, ExpertActor, FixedTurn, ModelActor, PolicyActor, episodes_to_batch, run_episodes

Start = Union[None, int, Sequence[int]]
Scorer = Callable[[Sequence[Episode]], list]
"""``scorer(episodes) -> per episode, per turn, the teacher's per-token log-probs of the
action ids`` (a stand-in for the teacher model in ``teacher_logprob``)."""


class JudgeUnreachable(TrainingError):
    """The LLM judge's endpoint could not be reached (after the retries)."""


@dataclass
class LocatorDeps:
    """What a locator may use, and where it reports (a mutable bag, one per sampler call)."""

    tokenizer: Any
    """The tokenizer of the episodes' ids."""
    teacher: Any = None
    """The teacher: a local model (``torch.nn.Module``), a ``ModelActor``, or an ``ExpertActor``
    / ``PolicyActor`` (program stand-ins; ``teacher_rollouts`` only). None: locators that need one raise."""
    scorer: Optional[Scorer] = None
    """Overrides the teacher model's scoring in ``teacher_logprob`` (e.g. a stub in tests)."""
    max_action_tokens: int = 16
    """Token budget of one action in ``teacher_rollouts`` continuations."""
    temperature: float = 1.0
    """The run's rollout temperature (a locator's own ``temperature`` option may override)."""
    generator: Optional[torch.Generator] = None
    """Seeded generator for sampled continuations."""
    envs: Optional[Mapping[str, type]] = None
    """Environment classes by name (default ``opdplug_agents.envs.ENVS``)."""
    stats: Counter = field(default_factory=Counter)
    """Counters (see the module docstring)."""
    notes: list = field(default_factory=list)
    """One line per problem met (e.g. why a judge reply was unusable)."""

    def env(self, episode: Episode):
        """A fresh environment at the start of ``episode``."""
        env = (self.envs or ENVS)[episode.env](**episode.options)
        env.reset(seed=episode.seed)
        return env


def _starts(start: Start, n: int) -> list[int]:
    if start is None:
        return [0] * n
    if isinstance(start, int):
        return [start] * n
    starts = [int(s) for s in start]
    if len(starts) != n:
        raise ValueError(f"{len(starts)} start turns for {n} episodes")
    return starts


def _checkable(episode: Episode, start: int) -> list[int]:
    """Turn indices a locator may flag: student turns from ``start`` on."""
    return [t for t, turn in enumerate(episode.turns) if t >= start and turn.producer == "student"]


def _finish(deps: LocatorDeps, found: list[Optional[int]]) -> list[Optional[int]]:
    deps.stats["episodes"] += len(found)
    deps.stats["located"] += sum(k is not None for k in found)
    return found


# ----------------------------------------------------------------------------- expert
@dataclass(frozen=True)
class ExpertLocator:
    """``expert``: replay each episode; the first student turn whose action is not optimal in
    effect (``ToolTextEnv.is_optimal``: valid, and solving the task or lowering the optimal
    remaining cost by one). Exact, no model calls."""

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        out: list[Optional[int]] = []
        for episode, s in zip(episodes, _starts(start, len(episodes))):
            check = set(_checkable(episode, s))
            env, found = deps.env(episode), None
            for t, turn in enumerate(episode.turns):
                if t in check and not env.is_optimal(turn.action_text):
                    found = t
                    break
                env.step(turn.action_text)
            out.append(found)
        return _finish(deps, out)


# ----------------------------------------------------------------------------- teacher log-prob
@torch.no_grad()
def teacher_action_logprobs(model, episodes: Sequence[Episode], tokenizer, *, temperature: float = 1.0) -> list:
    """Per episode, per turn, the model's per-token log-probs of the turn's exact action ids
    (the environment's closing ``<eos>`` of a truncated action excluded). One forward pass over
    the batch of episodes."""
    if not episodes:
        return []
    batch = episodes_to_batch(episodes, train_on=PRODUCERS, pad_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.train(False)
    try:
        lp_B_L = sampling.forward_logprobs(
            model, batch.input_ids_B_L.to(device), batch.attention_mask_B_L.to(device), temperature
        ).cpu()
    finally:
        model.train(was_training)
    out = []
    for b, episode in enumerate(episodes):
        pos, turns = len(episode.bos_ids), []
        for turn in episode.turns:
            pos += len(turn.observation_ids)
            turns.append(lp_B_L[b, pos:pos + len(turn.action_ids)].tolist())
            pos += len(turn.action_ids) + len(turn.closing_ids)
        out.append(turns)
    return out


@dataclass(frozen=True)
class TeacherLogprobLocator:
    """``teacher_logprob``: the first student turn whose teacher log-prob is too low.

    The teacher scores every episode's exact ids once (``teacher_action_logprobs``); a turn's
    score is the ``reduce`` (``mean`` or ``min``) of its action tokens' log-probs (``<eos>``
    included); the first checkable turn with a score below ``threshold`` is the error.
    """

    threshold: float = -1.0
    """Log-prob below which a turn counts as wrong (mean -1.0: about e^-1 = 0.37 per token)."""
    reduce: Literal["mean", "min"] = "mean"
    """How a turn's token log-probs become one score."""
    temperature: float = 1.0
    """Temperature of the teacher's log-probs."""

    def __post_init__(self):
        if not self.threshold <= 0.0:
            raise ValueError(f"teacher_logprob threshold must be <= 0 (a log-prob), got {self.threshold}")
        if self.reduce not in ("mean", "min"):
            raise ValueError(f"teacher_logprob reduce must be 'mean' or 'min', got {self.reduce!r}")

    def turn_scores(self, episodes: Sequence[Episode], deps: LocatorDeps) -> list[list[float]]:
        """Per episode, per turn, the reduced teacher log-prob of the action."""
        if deps.scorer is not None:
            token_lps = deps.scorer(episodes)
        else:
            model = deps.teacher.model if isinstance(deps.teacher, ModelActor) else deps.teacher
            if not isinstance(model, torch.nn.Module):
                raise ConfigError("locator 'teacher_logprob' needs a local teacher model; set teacher.path")
            token_lps = teacher_action_logprobs(model, episodes, deps.tokenizer, temperature=self.temperature)
            deps.stats["teacher_scorings"] += len(episodes)
        reduce = (lambda v: sum(v) / len(v)) if self.reduce == "mean" else min
        return [[reduce(v) if v else 0.0 for v in turns] for turns in token_lps]

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        starts = _starts(start, len(episodes))
        todo = [i for i, (e, s) in enumerate(zip(episodes, starts)) if _checkable(e, s)]
        out: list[Optional[int]] = [None] * len(episodes)
        if todo:
            scores = self.turn_scores([episodes[i] for i in todo], deps)
            for i, turn_scores in zip(todo, scores):
                out[i] = next((t for t in _checkable(episodes[i], starts[i]) if turn_scores[t] < self.threshold), None)
        return _finish(deps, out)


# ----------------------------------------------------------------------------- teacher rollouts
@dataclass(frozen=True)
class TeacherRolloutsLocator:
    """``teacher_rollouts``: where the teacher's chances drop.

    Rule. For an episode of T turns, let s_j (j = 0..T-1) be the fraction of ``n`` teacher
    continuations that succeed when turns ``0..j-1`` are replayed exactly and the teacher plays
    from turn j on (s_0: from the empty prefix, the episode's first observation), and s_T the
    episode's own outcome (1 or 0: nothing is left to continue). Turn k is the error iff it is
    the first checkable (student, >= start) turn with ``s_k - s_(k+1) >= margin``: the teacher
    could solve the task before the student's action k at a clearly higher rate than after it.
    An episode where the teacher never succeeds (all s = 0) has no located error.

    Cost: ``n`` teacher episodes for each prefix ``start .. T-1`` of each episode, all played
    in one batched ``run_episodes`` call; every teacher action is counted in
    ``deps.stats["teacher_actions"]``.
    """

    n: int = 2
    """Teacher continuations per prefix."""
    margin: float = 0.5
    """The least drop in success rate that flags a turn (in (0, 1])."""
    temperature: Optional[float] = None
    """Temperature of the continuations (None: the run's rollout temperature; 0: greedy, when
    ``n = 1`` is enough)."""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"teacher_rollouts n must be at least 1, got {self.n}")
        if not 0.0 < self.margin <= 1.0:
            raise ValueError(f"teacher_rollouts margin must be in (0, 1], got {self.margin}")

    def success_rates(self, episodes: Sequence[Episode], deps: LocatorDeps, starts: Sequence[int]) -> list[list[float]]:
        """Per episode, ``[s_start, ..., s_T]`` (entries before ``start`` are NaN)."""
        actor = deps.teacher
        if isinstance(actor, torch.nn.Module):
            actor = ModelActor(actor, "teacher")
        if not isinstance(actor, (ModelActor, ExpertActor, PolicyActor)):
            raise ConfigError("locator 'teacher_rollouts' needs a local teacher; set teacher.path")
        if self.temperature is not None and isinstance(actor, ModelActor):
            actor = ModelActor(actor.model, actor.producer, temperature=self.temperature, top_p=actor.top_p)
        specs, prefixes, where = [], [], []
        for i, (episode, s) in enumerate(zip(episodes, starts)):
            for j in range(s, episode.num_turns):
                for _ in range(self.n):
                    specs.append((episode.env, episode.seed, episode.options))
                    prefixes.append([FixedTurn(t.action_ids, t.producer, t.action_logprobs) for t in episode.turns[:j]])
                    where.append((i, j))
        rates = [[float("nan")] * e.num_turns + [1.0 if e.success else 0.0] for e in episodes]
        if specs:
            runs = run_episodes(
                specs, actor, deps.tokenizer, max_action_tokens=deps.max_action_tokens,
                temperature=deps.temperature, generator=deps.generator, prefixes=prefixes, envs=deps.envs,
            )
            wins: dict = {}
            for (i, j), run in zip(where, runs):
                wins[(i, j)] = wins.get((i, j), 0) + int(run.success)
                acted = run.turns[j:]
                deps.stats["teacher_actions"] += sum(t.producer == "teacher" for t in acted)
                deps.stats["expert_actions"] += sum(t.producer == "expert" for t in acted)
            for (i, j), w in wins.items():
                rates[i][j] = w / self.n
        return rates

    def locate(self, episodes: Sequence[Episode], deps: LocatorDeps, *, start: Start = None) -> list[Optional[int]]:
        starts = _starts(start, len(episodes))
        # Prefixes are only needed from the first checkable turn on.
        firsts = [(_checkable(e, s) or [e.num_turns])[0] for e, s in zip(episodes, starts)]
        rates = self.success_rates(episodes, deps, firsts)
        out = []
        for episode, s, r in zip(episodes, starts, rates):
            out.append(next((k for k in _checkable(episode, s) if r[k] - r[k + 1] >= self.margin - 1e-9), None))
        return _finish(deps, out)


# ----------------------------------------------------------------------------- LLM judge
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

    A reply that is not the strict JSON ``{"first_error": ...}``, names a step out of range or a
    step that is not a checkable student turn counts as "no error found" (None) and its reason
    goes to ``deps.notes`` (``judge_failures`` counts them). An endpoint that cannot be reached
    after ``retries`` retries raises ``JudgeUnreachable`` (one line naming the URL); HTTP 4xx
    other than 429 fails at once.
    """

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
    api_key_env: str = ""
    """Name of an environment variable holding a bearer token ("" sends none)."""

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"llm_judge url must start with http:// or https://, got {self.url!r}")
        if self.retries < 0 or self.timeout_s <= 0 or self.retry_wait_s < 0 or self.max_tokens < 1:
            raise ValueError("llm_judge needs retries >= 0, timeout_s > 0, retry_wait_s >= 0, max_tokens >= 1")

    def request(self, messages: list[dict]) -> dict:
        """POST one chat completion; the decoded JSON response, or raise."""
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.json_mode:
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
        for episode, s in zip(episodes, _starts(start, len(episodes))):
            check = _checkable(episode, s)
            if not check:
                out.append(None)
                continue
            response = self.request(judge_messages(episode, s))
            deps.stats["judge_calls"] += 1
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
        return _finish(deps, out)


# ----------------------------------------------------------------------------- registry
LOCATORS: dict[str, type] = {
    "expert": ExpertLocator,
    "teacher_logprob": TeacherLogprobLocator,
    "teacher_rollouts": TeacherRolloutsLocator,
    "llm_judge": LLMJudgeLocator,
}
"""Locator classes by name (frozen dataclasses whose fields are their options)."""


def build_locator(name: str, options: Optional[dict] = None, key: str = "locator"):
    """``LOCATORS[name]`` built from ``options`` (validated: unknown keys, wrong types and bad
    values are one-line ``ConfigError``s naming ``key``)."""
    from opdplug.config import from_dict

    if name not in LOCATORS:
        raise ConfigError(f"{key} = {name!r}: unknown locator; allowed: {', '.join(sorted(LOCATORS))}")
    return from_dict(LOCATORS[name], dict(options or {}), f"[{key} options of {name!r}]")
