"""The report of ``bench/agents_locators.py``: the printed table (the student's episodes, every
locator's accuracy and cost per environment, the ``teacher_logprob`` threshold sweep), the
headline, and the plot (``agents_locators.png``)."""
from __future__ import annotations

from pathlib import Path

from agents_locators_metrics import teacher_calls


def short_label(name: str, options: dict) -> str:
    """A locator's name with its options, short enough for the table."""
    if name == "teacher_logprob" and options:
        return f"teacher_logprob {options.get('reduce', 'mean')}<{options.get('threshold', -1.0)}"
    if name == "teacher_rollouts" and options:
        return f"teacher_rollouts n={options.get('n', 2)} m={options.get('margin', 0.5)}"
    if name == "llm_judge" and options:
        return f"llm_judge {options.get('model', 'default')}"
    return name


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:5.2f}"


def table_lines(results: dict, cfg) -> list[str]:
    """The printed table, less the headline: the student's held-out episodes, every locator per
    environment and over all, and the threshold sweep (``results["sweep_best"]`` set)."""
    lines = []
    lines.append(f"held-out student episodes (sampled at T={cfg.temperature}), labels = the expert locator's first error:")
    for env in cfg.envs:
        for h in cfg.horizons:
            ep = results["episodes"][env][str(h)]
            hist = " ".join(f"{k}:{v}" for k, v in ep["first_error_histogram"].items())
            lines.append(f"  {env:<12} h={h}  n={ep['n']:<4} success {ep['success']:.2f}  failing {ep['failing']:<3} "
                         f"with an error {ep['with_error']:<3} mean turns {ep['mean_turns']:.1f}   first error at turn: {hist}")
    lines.append("")
    head = (f"{'env':<12} {'locator':<27} {'exact':>5} {'+-1':>5} | on error episodes: {'exact':>5} {'+-1':>5} "
            f"{'early':>5} {'late':>5} {'miss':>5} | {'prec':>5} {'recall':>6} {'f.a.':>5} | {'calls/ep':>8} {'sec':>6}")
    lines.append(head)
    lines.append("-" * len(head))
    for scope in [*cfg.envs, "all"]:
        for name, info in results["locators"].items():
            label = short_label(name, info["options"])
            if not info["measured"]:
                lines.append(f"{scope:<12} {label:<27} {info['note']}")
                continue
            m = info["all"] if scope == "all" else info["by_env"][scope]
            cost = info["cost"]
            if scope != "all":
                used = info["cost_by_env"][scope]
                cost = {"teacher_calls_per_episode": teacher_calls(used) / m["n"], "seconds": used["seconds"]}
            cost_text = f"{cost['teacher_calls_per_episode']:>8.1f} {cost['seconds']:>6.1f}"
            lines.append(f"{scope:<12} {label:<27} {_fmt(m['exact'])} {_fmt(m['within_one'])} |                    "
                         f"{_fmt(m['exact_on_errors'])} {_fmt(m['within_one_on_errors'])} {_fmt(m['early'])} "
                         f"{_fmt(m['late'])} {_fmt(m['missed'])} | {_fmt(m['precision'])} {_fmt(m['recall']):>6} "
                         f"{_fmt(m['false_alarm'])} | {cost_text}")
        lines.append("")
    lines.append("teacher_logprob threshold sweep (offline, one scoring pass; exact / +-1 / recall / false alarm, all episodes):")
    lines.append(f"  {'threshold':>9}   " + "   ".join(f"{'reduce=' + r:^23}" for r in ("min", "mean")))
    for threshold in cfg.sweep_thresholds:
        cells = []
        for reduce in ("min", "mean"):
            r = next(r for r in results["sweep"]["all"] if r["reduce"] == reduce and r["threshold"] == threshold)
            cells.append(f"{_fmt(r['exact'])} {_fmt(r['within_one'])} {_fmt(r['recall'])} {_fmt(r['false_alarm'])}")
        mark = "  <- reported row" if threshold == cfg.logprob.get("threshold") else ""
        lines.append(f"  {threshold:>9.2f}   " + "   ".join(cells) + mark)
    best = results["sweep_best"]
    lines.append(f"  best on these labels (optimistic, picked after the fact): reduce={best['reduce']} "
                 f"threshold={best['threshold']}: exact {best['exact']:.2f}, within one {best['within_one']:.2f}")
    return lines


def headline(results: dict, cfg) -> tuple[dict, str]:
    """The headline numbers (``results["headline"]``) and the table's last line
    (``results["wall_seconds"]`` set)."""
    lp, tr = results["locators"]["teacher_logprob"], results["locators"]["teacher_rollouts"]
    n_all, n_err = lp["all"]["n"], lp["all"]["n_error"]
    judge = results["locators"]["llm_judge"]
    judge_text = (f"llm_judge {judge['all']['exact']:.2f}" if judge["measured"] else "llm_judge not measured (no endpoint)")
    numbers = {"teacher_logprob_exact": lp["all"]["exact"], "teacher_rollouts_exact": tr["all"]["exact"],
               "teacher_logprob_within_one": lp["all"]["within_one"],
               "teacher_rollouts_within_one": tr["all"]["within_one"],
               "llm_judge_exact": judge["all"]["exact"] if judge["measured"] else None,
               "episodes": n_all, "with_error": n_err}
    text = (f"headline: teacher_logprob exact-step accuracy {lp['all']['exact']:.2f} (within one step "
            f"{lp['all']['within_one']:.2f}), teacher_rollouts {tr['all']['exact']:.2f} ({tr['all']['within_one']:.2f}), "
            f"{judge_text}, vs expert labels over {n_all} episodes ({n_err} with an error; "
            f"{'+'.join(cfg.envs)}, h={','.join(map(str, cfg.horizons))})  [{results['wall_seconds']:.0f} s]")
    return numbers, text


def plot(results: dict, path: Path) -> None:
    """Accuracy per locator per environment (left); the expert's first-error histograms (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(results["config"]["envs"])
    rows = [(name, info) for name, info in results["locators"].items() if info.get("measured")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(rows), 1)
    cols = envs + ["all"]
    for i, (name, info) in enumerate(rows):
        exact = [info["by_env"][e]["exact"] if e != "all" else info["all"]["exact"] for e in cols]
        near = [info["by_env"][e]["within_one"] if e != "all" else info["all"]["within_one"] for e in cols]
        xs = [c + (i - (len(rows) - 1) / 2) * width for c in range(len(cols))]
        bars = ax.bar(xs, exact, width * 0.95, label=f"{name} exact")
        ax.bar(xs, [b - a for a, b in zip(exact, near)], width * 0.95, bottom=exact, color=bars[0].get_facecolor(),
               alpha=0.35, hatch="//", label=f"{name} within one step")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols)
    ax.set_ylim(0, 1.35)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy vs the expert's first error (all episodes)")
    ax.set_title("earliest-error locators (solid: exact step; hatched: within one step)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    hists = [(f"{e} h={h}", results["episodes"][e][str(h)]["first_error_histogram"])
             for e in envs for h in results["config"]["horizons"]]
    bins = sorted({k for _, hist in hists for k in hist if k != "none"}, key=int) + ["none"]
    width = 0.8 / max(len(hists), 1)
    for i, (label, hist) in enumerate(hists):
        xs = [b + (i - (len(hists) - 1) / 2) * width for b in range(len(bins))]
        bx.bar(xs, [hist.get(k, 0) for k in bins], width * 0.95, label=label)
    bx.set_xticks(range(len(bins)))
    bx.set_xticklabels(bins)
    bx.set_xlabel("the expert's first wrong student turn (none: no error)")
    bx.set_ylabel("episodes")
    bx.set_title("where first errors fall (weak BC student, sampled)", fontsize=10)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
