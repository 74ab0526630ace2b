"""The cost–quality (Pareto) plot of one cascade summary: the rule's threshold sweep, the
chosen operating point and every run alone, accuracy against FLOPs per example."""

from __future__ import annotations

from typing import Any

from ponder.analysis.figures import _new, png_bytes


def pareto_png(summary: dict[str, Any]) -> bytes:
    fig = _new(5.6, 3.8)
    ax = fig.subplots()
    pts = sorted(summary["curve"], key=lambda p: p["flops"])
    ax.plot([p["flops"] / 1e6 for p in pts], [p["accuracy"] for p in pts], "-o", ms=3,
            label=f"{summary['rule']} (threshold sweep, test)")
    t = summary["test"]
    ax.plot([t["flops"] / 1e6], [t["accuracy"]], "*", ms=12, label="chosen thresholds")
    for name, p in summary["single"].items():
        ax.plot([p["flops"] / 1e6], [p["accuracy"]], "s", ms=6, label=f"{name} alone")
    ax.set_xlabel("MFLOPs per example (measured)")
    ax.set_ylabel("accuracy (example right)")
    ax.set_title(f"Cascade '{summary['rule']}': cost against quality", fontsize=10)
    ax.legend(fontsize=7)
    return png_bytes(fig)
