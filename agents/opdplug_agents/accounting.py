"""What the agent samplers spent and saw, logged per step as ``agent/*`` metrics.

Samplers cannot return metrics (they return a ``RolloutBatch``), so each one adds counters to
``ctx.scratch["agents"]`` with ``record``; the plugin's ``opd_step_end`` moves the step's
counters into the step's metrics (``step_metrics``), and ``totals(ctx)`` keeps the run's sums
(for benchmarks that call samplers directly, and to equalise teacher budgets across methods).

Counters (sums over the step's micro-batches; every agent sampler reports the same keys):

``episodes``          episodes the sampler played (one per prompt)
``success``           of those, the ones that succeeded as first played (the student's for
                      ``agent``, ``agent_score``, ``agent_dagger``; the teacher's or expert's
                      for ``agent_teacher`` / ``agent_expert``)
``rows``              rows of the returned batch
``teacher_actions``   actions the local teacher model generated (one per action: rollouts,
                      SCoRe key steps, DAgger labels, teacher-rollout locator continuations)
``expert_actions``    actions the environment's expert wrote (a program: no model call)
``teacher_scorings``  teacher forward passes made by a sampler or locator (one per episode
                      scored by the ``teacher_logprob`` locator)
``judge_calls``       LLM-judge requests answered (``llm_judge`` locator)
``judge_failures``    judge replies that could not be used (reasons in ``notes(ctx)``)
``teacher_scored_rows``  rows scored by a teacher in the loss (``opd_score`` with a scorer other
                      than ``none``/``self``: plain agent OPD's teacher work)
``teacher_calls``     = teacher_actions + teacher_scorings + judge_calls + teacher_scored_rows
                      (derived): ONE definition of the teacher budget, a teacher forward call
                      being one generated action, one scored episode or row, or one judge
                      request; the number to equalise between methods
``teacher_tokens``    tokens the teacher model ran forward over: each scored row's or episode's
                      length, and for each action it generated the context it saw plus the action

SCoRe (``agent_score``) adds ``located`` (episodes with a first error), ``repairs`` (key steps
written), ``success_after`` (corrected trajectories that succeed), ``short_rows``; DAgger adds
``dagger_rows``. ``step_metrics`` also gives rates ``agent/success_rate`` (success / episodes),
``agent/success_after_rate``, and ``agent/first_error_positions`` (the list of first-error turn
indices of the step, for histograms) with their mean ``agent/first_error_mean``.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

SCRATCH = "agents"
TEACHER_CALLS = ("teacher_actions", "teacher_scorings", "judge_calls", "teacher_scored_rows")
"""The counters whose sum is ``teacher_calls``."""
MAX_NOTES = 200


def _state(ctx) -> dict | None:
    scratch = getattr(ctx, "scratch", None)
    if scratch is None:
        return None
    return scratch.setdefault(SCRATCH, {"step": Counter(), "positions": [], "total": Counter(), "all_positions": [], "notes": []})


def record(ctx, *, first_errors: Iterable[int] = (), notes: Iterable[str] = (), **counts: float) -> None:
    """Add ``counts`` to the step's and the run's counters; ``first_errors`` are first-error turn
    indices (histogram data); ``notes`` one-line remarks (kept, at most ``MAX_NOTES``)."""
    state = _state(ctx)
    if state is None:
        return
    for key, value in counts.items():
        state["step"][key] += value
        state["total"][key] += value
    positions = [int(p) for p in first_errors]
    state["positions"] += positions
    state["all_positions"] += positions
    room = MAX_NOTES - len(state["notes"])
    state["notes"] += list(notes)[:max(room, 0)]


def _with_derived(counts: Counter) -> dict:
    out = dict(counts)
    out["teacher_calls"] = sum(counts.get(k, 0) for k in TEACHER_CALLS)
    return out


def step_metrics(ctx) -> dict[str, Any]:
    """The step's ``agent/*`` metrics (and reset the step's counters); {} if nothing was recorded."""
    state = getattr(ctx, "scratch", {}).get(SCRATCH)
    if not state or not (state["step"] or state["positions"]):
        return {}
    counts = _with_derived(state["step"])
    out: dict[str, Any] = {f"agent/{k}": float(v) for k, v in sorted(counts.items())}
    episodes = counts.get("episodes", 0)
    if episodes:
        out["agent/success_rate"] = counts.get("success", 0) / episodes
        if "success_after" in counts:
            out["agent/success_after_rate"] = counts["success_after"] / episodes
    if state["positions"]:
        out["agent/first_error_positions"] = list(state["positions"])
        out["agent/first_error_mean"] = sum(state["positions"]) / len(state["positions"])
    state["step"] = Counter()
    state["positions"] = []
    return out


def totals(ctx) -> dict[str, Any]:
    """The run's counters so far (with ``teacher_calls``) and ``first_error_positions``."""
    state = getattr(ctx, "scratch", {}).get(SCRATCH)
    if not state:
        return {}
    out: dict[str, Any] = _with_derived(state["total"])
    out["first_error_positions"] = list(state["all_positions"])
    return out


def notes(ctx) -> list[str]:
    """Remarks recorded so far (e.g. why an LLM-judge reply was unusable)."""
    state = getattr(ctx, "scratch", {}).get(SCRATCH)
    return list(state["notes"]) if state else []


def teacher_action_tokens(episodes) -> int:
    """Tokens the teacher model ran forward over to write its actions in ``episodes``: per
    teacher turn, the episode's ids up to the end of that action (its context and the action)."""
    total = 0
    for episode in episodes:
        pos = len(episode.bos_ids)
        for turn in episode.turns:
            pos += len(turn.token_ids)
            if turn.producer == "teacher":
                total += pos
    return total


def record_stops(ctx, episodes) -> None:
    """Count why episodes stopped (``stopped_<reason>``); an episode the context budget ended
    also leaves a note naming it."""
    reasons = Counter(e.stop_reason or "unknown" for e in episodes)
    notes = [f"{e.env} seed {e.seed}: stopped by the context budget after {e.num_turns} turns ({len(e.token_ids)} tokens)"
             for e in episodes if e.stop_reason == "context"]
    record(ctx, notes=notes, **{f"stopped_{k}": v for k, v in reasons.items()})


def record_locator(ctx, deps) -> None:
    """Move a ``LocatorDeps``' counters and notes into the run's accounting."""
    keys = ("teacher_actions", "expert_actions", "teacher_scorings", "judge_calls", "judge_failures", "teacher_tokens",
            "locator_cache_hits", "locator_skipped")
    record(ctx, notes=deps.notes, **{k: deps.stats[k] for k in keys if deps.stats.get(k)})


# ----------------------------------------------------------------------------- hooks
from opdplug.hookspecs import hookimpl  # noqa: E402

@hookimpl(wrapper=True)
def opd_score(ctx, batch):
    """Count the agent rows a teacher scores for the loss (multi-turn batches only)."""
    scores = yield
    # Scores no teacher produced (self-scoring, no scorer) say so themselves.
    if getattr(scores, "scored_by_teacher", False) and getattr(batch, "turn_ids_B_L", None) is not None:
        record(ctx, teacher_scored_rows=batch.batch_size, teacher_tokens=int(batch.attention_mask_B_L.sum()))
    return scores


@hookimpl
def opd_step_end(ctx, step, metrics):
    """Log the step's ``agent/*`` counters."""
    metrics.update(step_metrics(ctx))
