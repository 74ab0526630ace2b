"""The figures of docs/results/experts.md from the runs of experts_results.sh.

    python benchmarks/experts_figures.py OUT_DIR DOC_DIR

Writes ``DOC_DIR/experts_heatmap.png`` (per task and routed row, the expert × complexity heat
map of the valid split: each complexity level's tokens per first-choice expert, drawn by
``ponder.analysis.figures.draw_experts_heatmap`` from each run's ``analysis.json``) and
``DOC_DIR/experts_curves.png`` (per task, the training loss and the in-training valid token
accuracy of every row against the step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ponder.analysis.figures import draw_experts_heatmap

TASKS = ["list_rank", "listops"]
ROWS = ["dense", "switch", "topk", "sigma_moe", "fff", "sut", "moeut"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def heatmaps(out: Path, path: Path) -> None:
    routed = [r for r in ROWS if r != "dense" and any((out / f"{t}-{r}" / "analysis.json").is_file() for t in TASKS)]
    if not routed:
        return
    fig = Figure(figsize=(2.3 * len(routed) + 1.0, 2.9 * len(TASKS)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(TASKS), len(routed), squeeze=False, gridspec_kw={"wspace": 0.45, "hspace": 0.55})
    image = None
    for i, task in enumerate(TASKS):
        for j, row in enumerate(routed):
            ax = axes[i][j]
            f = out / f"{task}-{row}" / "analysis.json"
            t = json.loads(f.read_text()).get("experts", {}).get("valid") if f.is_file() else None
            if t is None:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([]), ax.set_yticks([])
                continue
            image = draw_experts_heatmap(ax, t, f"{task} · {row}")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="share of the level's tokens", shrink=0.6)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def curves(out: Path, path: Path) -> None:
    fig = Figure(figsize=(11, 6.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(TASKS), squeeze=False)
    for j, task in enumerate(TASKS):
        for row in ROWS:
            run = out / f"{task}-{row}"
            if not (run / "metrics.jsonl").is_file():
                continue
            rows = metrics(run)
            tr = [r for r in rows if r.get("split") == "train" and "loss" in r]
            va = [r for r in rows if r.get("split") == "valid"]
            style = "-" if row in ("dense", "sut", "moeut") else "--"
            axes[0][j].plot([r["step"] for r in tr], [r["stat_task_loss"] for r in tr], style, lw=1, label=row)
            axes[1][j].plot([r["step"] for r in va], [r["token_acc"] for r in va], style, lw=1,
                            marker="o", ms=2, label=row)
        axes[0][j].set_title(f"{task}: training task loss", fontsize=9)
        axes[0][j].set_yscale("log")
        axes[1][j].set_title(f"{task}: valid token accuracy (in training, 2 batches)", fontsize=9)
        axes[1][j].set_xlabel("step")
        axes[1][j].legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    out, doc = Path(sys.argv[1]), Path(sys.argv[2])
    heatmaps(out, doc / "experts_heatmap.png")
    curves(out, doc / "experts_curves.png")
