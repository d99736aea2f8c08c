"""Earliest-error locators: which turn of an episode is the student's first mistake.

One interface, chosen by name in the registry (``build_locator``; the ``agent_score``
sampler's ``locator`` / ``locator_options`` options)::

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
                              least ``margin`` (the rule: ``teacher_rollouts``).
``llm_judge``                 an OpenAI-compatible ``/v1/chat/completions`` endpoint reads the
                              numbered steps and answers ``{"first_error": <int or null>}``
                              (the SCoRe paper's locator). Standard library only.
============================  ===============================================================

Counters (``deps.stats``): ``episodes`` searched, ``located`` errors found,
``teacher_actions`` (actions the teacher model generated, one per action), ``expert_actions``,
``teacher_scorings`` (teacher forward passes, one per scored episode), ``judge_calls`` (HTTP
requests answered), ``judge_failures`` (unusable replies, each with a reason in ``deps.notes``).

The locators of this table are registered by this plugin through ``opd_register_locators``
(``BUILTIN``), exactly as another plugin registers its own; ``build_locator`` finds any of them
by name. One module per locator; ``base`` holds what they share.
"""
from __future__ import annotations

from ..registries import build_locator
from .base import LocatorDeps, Scorer, Start, start_turns, student_turns
from .expert import ExpertLocator
from .llm_judge import JUDGE_SYSTEM, JudgeUnreachable, LLMJudgeLocator, judge_messages, parse_judge_reply
from .teacher_logprob import TeacherLogprobLocator, teacher_action_logprobs
from .teacher_rollouts import TeacherRolloutsLocator

BUILTIN: tuple[type, ...] = (ExpertLocator, TeacherLogprobLocator, TeacherRolloutsLocator, LLMJudgeLocator)
"""The locator classes this plugin registers (by their ``name``)."""

__all__ = [
    "BUILTIN", "JUDGE_SYSTEM", "ExpertLocator", "JudgeUnreachable", "LLMJudgeLocator", "LocatorDeps", "Scorer",
    "Start", "TeacherLogprobLocator", "TeacherRolloutsLocator", "build_locator", "judge_messages",
    "parse_judge_reply", "start_turns", "student_turns", "teacher_action_logprobs",
]
