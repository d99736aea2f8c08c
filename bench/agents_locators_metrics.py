"""The metrics of ``bench/agents_locators.py``: located first errors scored against the expert's
labels (the metrics listed in that script's docstring), each locator's row with its cost, and the
offline ``teacher_logprob`` threshold sweep."""
from __future__ import annotations

from collections import Counter

JUDGE_NOT_MEASURED = "not measured (needs an OpenAI-compatible endpoint; pass --judge-url URL)"


def score(pred: list, labels: list) -> dict:
    """Accuracy of located first errors ``pred`` against the expert's ``labels`` (the Metrics of
    ``bench/agents_locators.py``'s docstring)."""
    n = len(labels)
    err = [i for i, k in enumerate(labels) if k is not None]
    clean = [i for i, k in enumerate(labels) if k is None]
    flagged = [i for i, p in enumerate(pred) if p is not None]

    def frac(num, den):
        return num / den if den else None

    def near(p, k):
        return (p is None and k is None) or (p is not None and k is not None and abs(p - k) <= 1)

    tp = sum(labels[i] is not None for i in flagged)
    return {
        "n": n, "n_error": len(err), "n_clean": len(clean), "n_flagged": len(flagged),
        "exact": frac(sum(p == k for p, k in zip(pred, labels)), n),
        "within_one": frac(sum(near(p, k) for p, k in zip(pred, labels)), n),
        "exact_on_errors": frac(sum(pred[i] == labels[i] for i in err), len(err)),
        "within_one_on_errors": frac(sum(pred[i] is not None and abs(pred[i] - labels[i]) <= 1 for i in err), len(err)),
        "early": frac(sum(pred[i] is not None and pred[i] < labels[i] for i in err), len(err)),
        "late": frac(sum(pred[i] is not None and pred[i] > labels[i] for i in err), len(err)),
        "missed": frac(sum(pred[i] is None for i in err), len(err)),
        "false_alarm": frac(sum(pred[i] is not None for i in clean), len(clean)),
        "precision": frac(tp, len(flagged)),
        "recall": frac(tp, len(err)),
    }


def histogram(first_errors) -> dict:
    """``{"0": k0, "1": k1, ..., "none": k}`` of first-error turn indices."""
    counts = Counter(first_errors)
    out = {str(t): counts[t] for t in sorted(t for t in counts if t is not None)}
    out["none"] = counts.get(None, 0)
    return out


def teacher_calls(stats) -> int:
    """Teacher calls in the ``agents_horizon`` convention, from a locator's ``deps.stats`` counters."""
    return stats.get("teacher_actions", 0) + stats.get("teacher_scorings", 0) + stats.get("judge_calls", 0)


def gather(table: dict, keys: list, which) -> list:
    """The values of ``table[key]`` for each of ``keys`` that ``which`` accepts, concatenated."""
    return [k for key in keys if which(key) for k in table[key]]


def locator_rows(cfg, runs: list, failed: dict, preds: dict, labels: dict, stats: dict, env_stats: dict,
                 seconds: dict) -> dict:
    """Per locator of ``runs`` (``(name, options)``): its accuracies per environment, per environment
    and horizon and over all episodes, and its cost; ``failed`` ones and a missing ``llm_judge`` are
    rows marked not measured."""
    keys = [(env, h) for env in cfg.envs for h in cfg.horizons]
    rows = {}
    for name, options in runs:
        if name in failed:
            rows[name] = {"options": options, "measured": False, "note": failed[name]}
            continue
        cost = dict(stats[name])
        calls = teacher_calls(cost)
        n_all = len(gather(labels, keys, lambda k: True))
        rows[name] = {
            "options": options, "measured": True,
            "by_env": {env: score(gather(preds[name], keys, lambda k, e=env: k[0] == e),
                                  gather(labels, keys, lambda k, e=env: k[0] == e))
                       for env in cfg.envs},
            "by_env_horizon": {f"{env} h={h}": score(preds[name][(env, h)], labels[(env, h)]) for env, h in keys},
            "all": score(gather(preds[name], keys, lambda k: True), gather(labels, keys, lambda k: True)),
            "cost": {**cost, "teacher_calls": calls, "teacher_calls_per_episode": calls / n_all, "seconds": seconds[name]},
            "cost_by_env": env_stats[name],
        }
    if "llm_judge" not in rows:
        rows["llm_judge"] = {"options": {}, "measured": False, "note": JUDGE_NOT_MEASURED}
    return rows


def threshold_sweep(cfg, groups: dict, logprobs: dict, labels: dict) -> dict:
    """``teacher_logprob`` over ``cfg.sweep_thresholds`` for both ``reduce`` values, offline: the
    scorer replays one scoring pass (``logprobs``: per ``(env, h)`` of ``groups``, per episode, per
    turn, the teacher's token log-probs). Per scope (each environment, ``"all"``) the rows."""
    from opdplug_agents.locators import LocatorDeps, build_locator

    keys = [(env, h) for env in cfg.envs for h in cfg.horizons]
    sweep: dict = {}
    for reduce in ("min", "mean"):
        for threshold in cfg.sweep_thresholds:
            locator = build_locator("teacher_logprob", {**cfg.logprob, "reduce": reduce, "threshold": threshold})
            got = {}
            for key, episodes in groups.items():
                table = {id(e): lp for e, lp in zip(episodes, logprobs[key])}
                deps = LocatorDeps(tokenizer=None, scorer=lambda eps, table=table: [table[id(e)] for e in eps])
                got[key] = locator.locate(episodes, deps)
            for scope in [*cfg.envs, "all"]:
                sel = (lambda k: True) if scope == "all" else (lambda k, s=scope: k[0] == s)
                row = {"reduce": reduce, "threshold": threshold,
                       **score(gather(got, keys, sel), gather(labels, keys, sel))}
                sweep.setdefault(scope, []).append(row)
    return sweep
