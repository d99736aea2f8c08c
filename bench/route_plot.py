"""The route table's figure: accuracy against compute per route and ground, and the OPD route's
top-k overlap with the teacher over its steps (``bench/route_table.py``)."""
from __future__ import annotations

from pathlib import Path

COLORS = {"SFT": "tab:gray", "RL": "tab:red", "OPD": "tab:blue", "RL+OPD": "tab:purple"}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(5.5 * n, 7.5), squeeze=False)
    for j, (name, res) in enumerate(results.items()):
        ax = axes[0][j]
        for route, c in res["routes"].items():
            ax.plot([p["flops"] / 1e9 for p in c["points"]], [p["accuracy"] for p in c["points"]], marker="o", ms=3,
                    color=COLORS.get(route), label=route)
            if c["reach"]:
                ax.axvline(c["reach"]["flops"] / 1e9, color=COLORS.get(route), ls=":", lw=0.8)
        ax.axhline(res["teacher_accuracy"], color="black", ls="--", lw=1, label="teacher")
        ax.axhline(res["target"], color="green", ls=":", lw=1, label="target (teacher - 2 pts)")
        ax.set_xlabel("GFLOPs since the shared SFT checkpoint (teacher + student)")
        ax.set_ylabel("held-out greedy accuracy")
        ax.set_title(res["label"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1][j]
        ov = res["routes"].get("OPD", {}).get("topk_overlap")
        if ov:
            ax.plot(range(len(ov)), ov, color=COLORS["OPD"], lw=0.8)
        ax.set_xlabel("OPD step")
        ax.set_ylabel("top-k overlap, student vs teacher (--overlap-k)")
        ax.set_title("top-k overlap during OPD (student-visited states)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
