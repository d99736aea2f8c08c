"""Multi-turn evaluation: success against horizon, turns taken, and where first errors fall.

``success_by_horizon(model, tokenizer, "gridnav", [2, 4, 6], n=100, seed=0)`` plays ``n``
held-out episodes per horizon (the ``eval`` split of the ``agent`` task: never a training
episode) with the model acting every turn (greedy by default), and returns an
``AgentEvalReport``: per horizon the success rate, the mean number of turns, and the turn of
the first error of every episode. ``model="expert"`` plays the environment's expert instead
(a sanity check: success 1.0, no errors).

First error
-----------
The first of the model's turns that is not an optimal move in effect: an invalid or malformed
call, a bump or wasted call, or a move that does not bring the optimal remaining cost down by
exactly one (equally optimal alternatives count as right: another shortest path in
``gridnav``, another out-of-order pair in ``swapsort``, another chain order in
``calc_lookup``). It is found by the locator registered as ``expert`` (the SCoRe locator
interface, ``env.is_optimal``); where no plugin registers one, by ``first_error_cost_to_go``,
the same rule computed here by letting the expert finish the episode from each prefix and
counting its actions. ``first_error_source`` says which was used.
Only the model's own turns are checked, so the expert never has an error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from opdplug.context import derive_seed

from .actors import ExpertActor, ModelActor
from .episodes import Episode
from .registries import LOCATORS, build_locator, episode_env, horizon_range, make_env, registry_or_installed
from .rollout import run_episodes
from .task import AgentTask

EXPERT = "expert"
"""Pass as ``model`` to evaluate the environment's expert."""


@dataclass(frozen=True)
class HorizonResult:
    """The episodes of one horizon."""

    horizon: int
    """The environment's difficulty knob."""
    n: int
    """Episodes played."""
    success: float
    """Fraction that succeeded."""
    mean_turns: float
    """Mean number of turns taken (actions sent to the environment)."""
    first_errors: tuple = ()
    """Per episode, the 0-based turn of its first error, or None (no error)."""
    distinct: int = 0
    """Distinct episodes among the ``n`` (by the environment's ``episode_key``): small episode
    spaces repeat episodes (a 4x4 grid without walls has one held-out episode at horizon 5)."""

    @property
    def first_error_histogram(self) -> dict[str, int]:
        """``{"0": k0, "1": k1, ..., "none": k}``: episodes by the turn of their first error."""
        out: dict[str, int] = {}
        for t in sorted(t for t in self.first_errors if t is not None):
            out[str(t)] = out.get(str(t), 0) + 1
        out["none"] = sum(t is None for t in self.first_errors)
        return out

    @property
    def mean_first_error(self) -> Optional[float]:
        """Mean turn of the first error over the episodes that had one (None if none had)."""
        errs = [t for t in self.first_errors if t is not None]
        return sum(errs) / len(errs) if errs else None


@dataclass(frozen=True)
class AgentEvalReport:
    """What ``success_by_horizon`` returns."""

    env: str
    """The environment."""
    results: dict = field(default_factory=dict)
    """Horizon -> ``HorizonResult``."""
    first_error_source: str = "cost_to_go"
    """How first errors were found: ``"cost_to_go"`` (this module) or ``"locator:expert"``."""

    @property
    def success(self) -> dict[int, float]:
        """Horizon -> success rate."""
        return {h: r.success for h, r in self.results.items()}

    @property
    def mean_turns(self) -> dict[int, float]:
        """Horizon -> mean turns."""
        return {h: r.mean_turns for h, r in self.results.items()}

    def to_dict(self) -> dict:
        """A JSON-ready dict (horizons as strings)."""
        return {
            "env": self.env,
            "first_error_source": self.first_error_source,
            "horizons": {
                str(h): {
                    "n": r.n, "distinct": r.distinct, "success": r.success, "mean_turns": r.mean_turns,
                    "mean_first_error": r.mean_first_error, "first_error_histogram": r.first_error_histogram,
                }
                for h, r in self.results.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


# ----------------------------------------------------------------------------- first errors
def episode_key(episode: Episode, registry=None) -> str:
    """The environment's key of the episode (what its train/eval split hashes)."""
    env = make_env(episode.env, dict(episode.options), registry)
    return env.reset(seed=episode.seed)[1]["episode_key"]


def cost_to_go(env, actions: Sequence[str], limit: int = 1000) -> Optional[int]:
    """The expert's number of actions to finish the episode of ``env`` after ``actions``
    (replayed from the start); None if the prefix already ended it."""
    env.replay(list(actions))
    steps = 0
    done = env.episode_over
    if done:
        return None
    while not done and steps < limit:
        _, _, terminated, truncated, _ = env.step(env.expert_action())
        steps += 1
        done = terminated or truncated
    return steps


def first_error_cost_to_go(episode: Episode, registry=None) -> Optional[int]:
    """The 0-based turn of the episode's first error (see the module docstring), or None."""
    env = episode_env(episode, registry)
    actions = [t.action_text for t in episode.turns]
    before = cost_to_go(env, [])
    for t, turn in enumerate(episode.turns):
        if not turn.valid or turn.truncated:
            return t
        after = cost_to_go(env, actions[: t + 1])
        if after is None:  # this action ended the episode: fine only if it solved it
            env.replay(actions[: t + 1])
            return None if env.solved else t
        if before is None or after != before - 1:
            return t
        before = after
    # All actions optimal but the episode stopped before the end (max_turns / max_tokens).
    return None if episode.success else len(episode.turns)


def _expert_locator(tokenizer, registry) -> Optional[Callable[[Sequence[Episode]], list]]:
    """``episodes -> first error turns`` by the locator registered as ``expert`` (the SCoRe
    locator interface) when a plugin registers one; else None."""
    from .locators import LocatorDeps

    if EXPERT not in registry.names(LOCATORS):
        return None
    locator = build_locator(EXPERT, {}, "locator", registry)

    def locate(episodes: Sequence[Episode]) -> list:
        return locator.locate(episodes, LocatorDeps(tokenizer=tokenizer, registry=registry))

    return locate


def distinct_prompts(task: AgentTask, n: int, *, seed: int, split: str, length: int, draws: int = 4) -> list:
    """``n`` prompts of distinct episodes where the environment has that many (``draws * n``
    candidates, first occurrences kept); a finite pool with fewer repeats them, in order, and
    ``HorizonResult.distinct`` says so."""
    candidates = task.prompts(draws * n, seed=seed, split=split, length=length)
    seen: dict[str, Any] = {}
    for p in candidates:
        key = task.env(p.meta["options"]).reset(seed=p.meta["seed"])[1].get("episode_key", str(p.prompt_ids))
        seen.setdefault(key, p)
    unique = list(seen.values())
    return [unique[i % len(unique)] for i in range(n)] if len(unique) < n else unique[:n]


# ----------------------------------------------------------------------------- evaluation
def _actor(model: Any, temperature: float) -> Union[ModelActor, ExpertActor]:
    if isinstance(model, str):
        if model != EXPERT:
            raise ValueError(f"model must be a causal LM or {EXPERT!r}, got {model!r}")
        return ExpertActor()
    return ModelActor(model, "student", temperature=temperature)


@torch.no_grad()
def success_by_horizon(
    model: Any,
    tokenizer: Any,
    env: str,
    horizons: Sequence[int],
    n: int,
    *,
    seed: int = 1234,
    split: str = "eval",
    temperature: float = 0.0,
    max_turns: Optional[int] = None,
    batch: int = 64,
    env_options: Optional[Mapping[str, Any]] = None,
    max_action_tokens: int = 0,
    first_errors: bool = True,
    progress: bool = False,
    progress_desc: str = "eval",
    registry=None,
) -> AgentEvalReport:
    """Play ``n`` episodes per horizon with ``model`` acting every turn and report success.

    :param model: a causal LM speaking ``tokenizer`` (put in inference mode while it acts), or
        ``"expert"`` for the environment's expert.
    :param tokenizer: a tokenizer built from ``AgentTask.words()`` (the shared agent vocabulary).
    :param env: a registered environment's name (built in: ``calc_lookup``, ``gridnav``, ``swapsort``).
    :param horizons: the horizons to evaluate (each in the environment's ``horizon_range``).
    :param n: episodes per horizon.
    :param seed: picks the episodes (the same seed gives the same episodes for every model).
    :param split: ``"eval"`` (held out, the default) or ``"train"``.
    :param temperature: 0 = greedy.
    :param max_turns: turn limit per episode (None: the environment's default).
    :param batch: episodes played at once.
    :param env_options: other environment options (``{"size": 6}``), as in ``[task.options]``.
    :param max_action_tokens: token budget of one action (0: the expert's longest + 4).
    :param first_errors: also find the first error of each episode (cheap: environment replays).
    :param progress: show a tqdm bar over episodes.
    :param registry: where the environments and locators are registered (default: the
        installed plugins').
    :return: an ``AgentEvalReport``.
    :raises ConfigError: an environment no plugin registered.
    :raises ValueError: horizon out of range, bad options.
    """
    registry = registry_or_installed(registry)
    lo, hi = horizon_range(env, env_options, registry, "env")
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be >= 1, got n={n}, batch={batch}")
    bad = [h for h in horizons if not lo <= int(h) <= hi]
    if bad or not horizons:
        raise ValueError(f"{env} horizons must be in {lo}..{hi}, got {list(horizons)}")
    actor = _actor(model, temperature)
    locate = _expert_locator(tokenizer, registry) if first_errors else None
    source = "locator:expert" if locate is not None else "cost_to_go"
    if locate is None:
        locate = lambda episodes: [first_error_cost_to_go(e, registry) for e in episodes]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * len(horizons), desc=progress_desc, dynamic_ncols=True, leave=False)
    results: dict[int, HorizonResult] = {}
    try:
        for h in horizons:
            h = int(h)
            task = AgentTask(tokenizer, env=env, min_horizon=h, max_horizon=h, max_turns=max_turns or 0,
                             env_options=dict(env_options or {}), max_action_tokens=max_action_tokens,
                             registry=registry)
            prompts = distinct_prompts(task, n, seed=derive_seed(seed, "agent-eval", env, h), split=split, length=h)
            budget = task.max_new_tokens(h)
            episodes: list[Episode] = []
            for start in range(0, n, batch):
                chunk = prompts[start:start + batch]
                specs = [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in chunk]
                episodes += run_episodes(
                    specs, actor, task.codec, max_action_tokens=budget, temperature=temperature,
                    generator=torch.Generator().manual_seed(derive_seed(seed, "agent-eval-draws", h, start)),
                    registry=registry,
                )
                if bar is not None:
                    bar.update(len(chunk))
            errors = tuple(locate(episodes)) if first_errors else ()
            results[h] = HorizonResult(
                horizon=h, n=len(episodes),
                success=sum(e.success for e in episodes) / len(episodes),
                mean_turns=sum(e.num_turns for e in episodes) / len(episodes),
                first_errors=errors, distinct=len({episode_key(e, registry) for e in episodes}),
            )
    finally:
        if bar is not None:
            bar.close()
    return AgentEvalReport(env=env, results=results, first_error_source=source)


def format_table(reports: Mapping[str, AgentEvalReport], *, turns: bool = False) -> str:
    """A text table: one row per model, one column per horizon (success rates)."""
    horizons = sorted({h for r in reports.values() for h in r.results})
    name_w = max([len("model"), *(len(k) for k in reports)]) + 2
    lines = [f"{'model':<{name_w}}" + "".join(f"h={h:<6}" for h in horizons)]
    for name, report in reports.items():
        cells = []
        for h in horizons:
            r = report.results.get(h)
            cells.append(f"{r.success:<8.3f}" if r else f"{'-':<8}")
        lines.append(f"{name:<{name_w}}" + "".join(cells))
        if turns:
            lines.append(f"{'  mean turns':<{name_w}}" + "".join(
                f"{report.results[h].mean_turns:<8.2f}" if h in report.results else f"{'-':<8}" for h in horizons))
    return "\n".join(lines)


def plot_success(reports: Mapping[str, AgentEvalReport], path, *, title: str = "") -> None:
    """Write a PNG of success rate against horizon, one line per model (dashed: teacher/expert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    horizons: set[int] = set()
    for name, report in reports.items():
        hs = sorted(report.results)
        horizons.update(hs)
        style = "--" if name in ("teacher", "expert") else "-"
        ax.plot(hs, [report.results[h].success for h in hs], style, marker="o", label=name)
    ax.set_xticks(sorted(horizons))
    ax.set_xlabel("horizon")
    ax.set_ylabel("success rate (held-out episodes)")
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = [
    "EXPERT", "AgentEvalReport", "HorizonResult", "cost_to_go", "distinct_prompts", "episode_key", "first_error_cost_to_go",
    "format_table", "plot_success", "success_by_horizon",
]
