"""Acceptance and speed of a drafter on held-out task prompts, as tables and JSON.

``evaluate`` runs ``specdec.measure`` for every (batch size, temperature) asked, on the eval split
of the task (SumChain by default), each prompt with the task's own completion budget.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from opdplug.context import derive_seed

from .acceptance import SpecReport
from .specdec import measure


def held_out(task: Any, n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """``n`` eval-split prompts of ``task`` (lengths drawn over its range) and their budgets."""
    prompts = task.prompts(n, seed=derive_seed(seed, "drafter-eval"), split="eval")
    return [list(p.prompt_ids) for p in prompts], [task.max_new_tokens(p.meta.get("length", 1)) for p in prompts]


def evaluate(
    target: Any,
    drafter: Any,
    task: Any,
    *,
    eos_id: int,
    k: int = 4,
    n_prompts: int = 32,
    batch_sizes: Sequence[int] = (1,),
    temperatures: Sequence[float] = (0.0,),
    repetitions: int = 3,
    time_it: bool = True,
    check_identity: bool = True,
    seed: int = 1234,
    progress: bool = False,
) -> list[SpecReport]:
    """One ``SpecReport`` per (batch size, temperature), in that order."""
    prompts, budgets = held_out(task, n_prompts, seed)
    reports = []
    for batch_size in batch_sizes:
        for temperature in temperatures:
            reports.append(measure(
                target, drafter, prompts, max_new_tokens=budgets, eos_id=eos_id, k=k, temperature=temperature,
                batch_size=batch_size, repetitions=repetitions, seed=seed, time_it=time_it,
                check_identity=check_identity, progress=progress,
                desc=f"specdec B={batch_size} T={temperature:g}",
            ))
    return reports


def report_dicts(reports: Sequence[SpecReport]) -> list[dict]:
    """The reports as JSON-able dicts (NaN as None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.to_dict().items()} for r in reports]


NAME = 24
"""Width of the drafter-name column."""


def _fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(reports: Sequence[SpecReport], name: str = "") -> str:
    """A fixed-width table of reports: acceptance length (bonus included), per-position rates
    (measured / predicted by 1 - TVD), closed form, tokens/s and speed-up."""
    k = reports[0].k if reports else 0
    head = (f"{'drafter':<{NAME}}" if name else "") + (
        f"{'B':>3} {'T':>4} {'acc.len':>8} {'(uncut)':>8} {'closed':>7}  "
        + " ".join(f"{'p' + str(j + 1):>9}" for j in range(k))
        + f"  {'tok/s':>7} {'target':>7} {'speedup':>7} {'same':>5}"
    )
    lines = [head]
    for r in reports:
        rates = " ".join(f"{_fmt(a):>4}/{_fmt(p):<4}" for a, p in zip(r.position_acceptance, r.predicted_position_acceptance))
        same = "-" if r.identical_to_target is None else ("yes" if r.identical_to_target else "NO")
        lines.append((f"{name[:NAME - 1]:<{NAME}}" if name else "") + (
            f"{r.batch_size:>3} {r.temperature:>4g} {r.acceptance_length:>8.2f} {r.acceptance_length_uncut:>8.2f} "
            f"{r.closed_form_acceptance_length:>7.2f}  {rates}  {_fmt(r.tokens_per_s, '.0f'):>7} "
            f"{_fmt(r.target_tokens_per_s, '.0f'):>7} {_fmt(r.speedup):>6}x {same:>5}"
        ))
    return "\n".join(lines)


LEGEND = (
    "acc.len: tokens emitted per target verify forward, bonus included (SGLang's spec_accept_length; "
    "at most k+1); (uncut): before cutting at EOS/budget; closed: (1-b^(k+1))/(1-b) with b = mean 1-TVD; "
    "pj: acceptance of draft j given j-1 accepted, measured/predicted by 1-TVD(p,q); tok/s and speedup: "
    "medians of alternated runs against target-only decoding on the same KV-cached forward; "
    "same: greedy output identical to target-only greedy decoding"
)
