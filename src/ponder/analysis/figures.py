"""Figures (PNG, matplotlib's Agg canvas; no pyplot global state) drawn from an analysis dict.

Every figure reads only the numbers in ``analysis.json``, so a figure and the JSON never
disagree. ``write_figures`` saves them atomically; ``render_*`` return a Figure.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ponder.train.checkpoint import atomic_write_bytes

DPI = 100
SPLIT_STYLE = {"train": "-", "valid": "-", "test": "-", "ood": "--"}


def _new(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)  # no layout engine: 3-4x faster; bbox "tight" on save
    FigureCanvasAgg(fig)
    return fig


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def render_alignment(analysis: dict[str, Any]) -> Figure:
    """One heat map per split: share of each complexity level's tokens at each step count."""
    splits = list(analysis["alignment"])
    fig = _new(4.2 * max(len(splits), 1), 3.6)
    axes = fig.subplots(1, max(len(splits), 1), squeeze=False)[0]
    fig.subplots_adjust(wspace=0.55)  # room for each panel's colour bar label
    for ax, split in zip(axes, splits):
        a = analysis["alignment"][split]
        counts = np.asarray(a["heatmap"]["counts"], dtype=float)
        if counts.size == 0:
            _empty(ax, "no tokens")
            continue
        steps, comps = a["heatmap"]["steps"], a["heatmap"]["complexity"]
        share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
        image = ax.imshow(share, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          extent=(-0.5, len(comps) - 0.5, -0.5, len(steps) - 0.5))
        every_c, every_s = max(1, len(comps) // 16), max(1, len(steps) // 16)  # keep labels legible
        ax.set_xticks(range(0, len(comps), every_c), [str(c) for c in comps[::every_c]], fontsize=7)
        ax.set_yticks(range(0, len(steps), every_s), [str(s) for s in steps[::every_s]], fontsize=7)
        # mean steps per level, drawn in the heat map's index coordinates
        mean = [row["mean_steps"] for row in a["by_complexity"]]
        ax.plot(range(len(comps)), np.interp(mean, steps, range(len(steps))), "w.-", lw=1)
        rho = "ρ undefined" if a["rho"] is None else f"ρ = {a['rho']:.2f}"
        ax.set_title(f"{split}: {rho}", fontsize=10)
        ax.set_xlabel("complexity")
        ax.set_ylabel("steps")
        fig.colorbar(image, ax=ax, label="share of the level's tokens", shrink=0.85)
    return fig


def render_steps_by_complexity(analysis: dict[str, Any]) -> Figure:
    fig = _new(5.2, 3.6)
    ax = fig.subplots()
    max_steps = None
    for split, a in analysis["alignment"].items():
        rows = a["by_complexity"]
        if not rows:
            continue
        x = [r["complexity"] for r in rows]
        y = np.array([r["mean_steps"] for r in rows])
        sd = np.array([r["std_steps"] for r in rows])
        line, = ax.plot(x, y, SPLIT_STYLE.get(split, "-"), marker="o", ms=3, label=split)
        ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.15)
        max_steps = analysis["compute"].get(split, {}).get("max_steps") or max_steps
    if max_steps:
        ax.axhline(max_steps, color="0.5", lw=0.8, ls=":", label="max steps")
    ax.set_xlabel("complexity")
    ax.set_ylabel("mean steps (± 1 sd)")
    ax.set_title("Steps per complexity level", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def _main_knob(analysis: dict[str, Any]) -> str | None:
    """The size knob with the most distinct values across splits."""
    values: dict[str, set] = {}
    for entry in analysis["generalisation"].values():
        for knob, rows in entry["by_knob"].items():
            values.setdefault(knob, set()).update(r["value"] for r in rows)
    numeric = {k: v for k, v in values.items() if all(isinstance(x, (int, float)) for x in v)}
    return max(numeric, key=lambda k: len(numeric[k])) if numeric else None


def render_generalisation(analysis: dict[str, Any]) -> Figure:
    """Accuracy and mean steps against the main size knob; the training range shaded."""
    fig = _new(13.0, 3.4)
    ax_acc, ax_steps, ax_labels = fig.subplots(1, 3)
    fig.subplots_adjust(wspace=0.3)
    _render_labels(ax_labels, analysis)
    knob = _main_knob(analysis)
    if knob is None:
        _empty(ax_acc, "no numeric size knob in the records")
        _empty(ax_steps, "")
        return fig
    shaded = False
    for split, entry in analysis["generalisation"].items():
        rows = entry["by_knob"].get(knob, [])
        if not rows:
            continue
        x = [r["value"] for r in rows]
        style = SPLIT_STYLE.get(split, "-")
        ax_acc.plot(x, [r["accuracy"] for r in rows], style, marker="o", ms=3, label=split)
        ax_steps.plot(x, [r["mean_steps"] for r in rows], style, marker="o", ms=3, label=split)
        rng = entry["train_range"].get(knob)
        if rng and not shaded:
            for ax in (ax_acc, ax_steps):
                ax.axvspan(rng[0], rng[1], color="0.85", zorder=0, label="train range")
            shaded = True
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_ylabel("token accuracy")
    ax_steps.set_ylabel("mean steps")
    for ax in (ax_acc, ax_steps):
        ax.set_xlabel(knob)
        ax.legend(fontsize=8)
    ax_acc.set_title(f"Accuracy vs {knob}", fontsize=10)
    ax_steps.set_title(f"Compute vs {knob}", fontsize=10)
    return fig


def _render_labels(ax, analysis: dict[str, Any]) -> None:
    """Accuracy on labels seen in training vs never seen, per split (bar absent: no such token)."""
    splits = list(analysis["generalisation"])
    xs = np.arange(len(splits))
    for offset, kind in ((-0.2, "seen"), (0.2, "unseen")):
        stats = [analysis["generalisation"][s]["labels"][kind] for s in splits]
        ax.bar(xs + offset, [st["accuracy"] or 0 for st in stats], 0.4, label=f"{kind} labels")
        for x, st in zip(xs, stats):
            ax.text(x + offset, (st["accuracy"] or 0) + 0.02, f"n={st['n']}", ha="center", fontsize=7)
    ax.set_xticks(xs, splits)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("token accuracy")
    ax.set_title("Seen vs unseen labels", fontsize=10)
    ax.legend(fontsize=8)


def render_decision_timing(analysis: dict[str, Any]) -> Figure:
    """Held-out R² of the static / execution / both models, per split."""
    fig = _new(5.2, 3.4)
    ax = fig.subplots()
    splits = list(analysis["decision_timing"])
    kinds = ("static", "execution", "both")
    width = 0.8 / len(kinds)
    drawn = False
    for i, kind in enumerate(kinds):
        vals = [((analysis["decision_timing"][s].get("r2") or {}).get(kind)) for s in splits]
        xs = [j + (i - 1) * width for j in range(len(splits))]
        ax.bar(xs, [v if v is not None else 0 for v in vals], width, label=kind)
        drawn = drawn or any(v is not None for v in vals)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylim(min(0, ax.get_ylim()[0]), 1.05)
    ax.set_ylabel("held-out R² (steps)")
    ax.set_title("What explains the steps?" if drawn else "Steps are constant: nothing to explain",
                 fontsize=10)
    ax.legend(fontsize=8)
    return fig


def render_compute(analysis: dict[str, Any]) -> Figure:
    """Token-steps and FLOPs as a fraction of the fixed-depth baseline, per split."""
    fig = _new(5.2, 3.4)
    ax = fig.subplots()
    splits = list(analysis["compute"])
    steps = [analysis["compute"][s]["step_ratio"] or 0 for s in splits]
    flops = [analysis["compute"][s]["flops"]["ratio"] or 0 for s in splits]
    xs = np.arange(len(splits))
    ax.bar(xs - 0.2, steps, 0.4, label="token-steps")
    ax.bar(xs + 0.2, flops, 0.4, label="FLOPs (est.)")
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--", label="fixed depth")
    ax.set_xticks(xs, splits)
    ax.set_ylim(0, 1.35)
    ax.set_ylabel("fraction of fixed-depth compute")
    ax.set_title("Compute spent", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    return fig


def render_size_sweep(analysis: dict[str, Any]) -> Figure:
    """Accuracy, mean steps and ρ(steps, complexity) against the swept size (``ponder eval
    --sweep``), one line per swept knob; training range shaded, ood range hatched."""
    fig = _new(13.0, 3.4)
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(wspace=0.3)
    sweeps = analysis.get("size_sweep") or {}
    if not sweeps:
        _empty(axes[0], "no size sweep (ponder eval RUN_DIR --sweep KNOB=LO..HI)")
        _empty(axes[1], "")
        _empty(axes[2], "")
        return fig
    keys = (("accuracy", "token accuracy"), ("mean_steps", "mean steps"), ("rho", "ρ(steps, complexity)"))
    for ax, (key, label) in zip(axes, keys):
        for knob, sw in sweeps.items():
            rows = [r for r in sw["rows"] if r[key] is not None]
            ax.plot([r["size"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=knob)
            if sw.get("train_range"):
                ax.axvspan(sw["train_range"][0], sw["train_range"][1], color="0.85", zorder=0,
                           label=f"train range ({knob})")
            if sw.get("ood_range"):
                ax.axvspan(sw["ood_range"][0], sw["ood_range"][1], facecolor="none", hatch="//",
                           edgecolor="0.7", zorder=0, label=f"ood range ({knob})")
        ax.set_xlabel(" / ".join(sweeps) + " (size)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(-1.05, 1.05)
    axes[0].set_title("Accuracy vs size", fontsize=10)
    axes[1].set_title("Steps vs size", fontsize=10)
    axes[2].set_title("Alignment vs size", fontsize=10)
    return fig


def render_depth_curve(analysis: dict[str, Any]) -> Figure:
    """Accuracy against the inference loop count (``ponder eval --depths``), per split; the
    training depth dashed."""
    fig = _new(5.2, 3.4)
    ax = fig.subplots()
    curve = analysis.get("depth_curve") or {}
    if not curve.get("splits"):
        _empty(ax, "no depth curve (ponder eval --depths A:B)")
        return fig
    for split, rows in curve["splits"].items():
        ax.plot([r["steps"] for r in rows], [r["token_acc"] for r in rows], SPLIT_STYLE.get(split, "-"),
                marker="o", ms=3, label=split)
    if curve.get("trained_max_steps"):
        ax.axvline(curve["trained_max_steps"], color="0.3", lw=0.8, ls="--", label="trained N")
    ax.set_xlabel("inference loop count (per segment)" if curve.get("segments", 1) > 1 else "inference loop count")
    ax.set_ylabel("token accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy against inference depth", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def experts_matrix(t: dict[str, Any]) -> tuple[np.ndarray, list[int], list[int]]:
    """One split's ``experts`` analysis → (share [complexities, experts]: each complexity
    level's tokens per expert, rows summing to 1; the complexity levels; the experts)."""
    experts = [int(e) for e in t["experts"]]
    levels = sorted(int(c) for c in t["table"])
    share = np.zeros((len(levels), len(experts)))
    for i, c in enumerate(levels):
        counts = t["table"].get(c, t["table"].get(str(c), {}))
        for j, e in enumerate(experts):
            share[i, j] = counts.get(e, counts.get(str(e), 0))
        share[i] /= max(share[i].sum(), 1)
    return share, levels, experts


def draw_experts_heatmap(ax, t: dict[str, Any], title: str) -> Any:
    """The expert × complexity heat map of one split on ``ax`` (colour: share of the level's
    tokens; the title carries I(expert; complexity) and its shuffled-complexity value)."""
    share, levels, experts = experts_matrix(t)
    image = ax.imshow(share, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(experts)), [str(e) for e in experts], fontsize=7)
    step = max(1, len(levels) // 10)
    ax.set_yticks(range(0, len(levels), step), [str(c) for c in levels[::step]], fontsize=7)
    ax.set_xlabel("expert (first choice)", fontsize=8)
    ax.set_ylabel("complexity", fontsize=8)
    ax.set_title(f"{title}\nI = {t['mutual_information_bits']:.2f} bits "
                 f"[shuffled {t['shuffled_bits']:.2f}]", fontsize=8)
    return image


def render_experts(analysis: dict[str, Any]) -> Figure:
    """Expert × complexity heat maps, one panel per split (runs with a routed-expert FFN)."""
    splits = analysis.get("experts") or {}
    fig = _new(2.6 * max(1, len(splits)) + 0.8, 3.2)
    axes = fig.subplots(1, max(1, len(splits)), squeeze=False, gridspec_kw={"wspace": 0.4})[0]
    if not splits:
        _empty(axes[0], "no routed experts")
        return fig
    image = None
    for ax, (split, t) in zip(axes, splits.items()):
        image = draw_experts_heatmap(ax, t, split)
    fig.colorbar(image, ax=list(axes), label="share of the level's tokens", shrink=0.85)
    return fig


RENDERERS = {
    "alignment": render_alignment,
    "steps_by_complexity": render_steps_by_complexity,
    "generalisation": render_generalisation,
    "decision_timing": render_decision_timing,
    "compute": render_compute,
    "depth_curve": render_depth_curve,
}
# drawn only when the analysis has the section (runs swept with ``ponder eval --sweep``)
# (and by runs with a routed-expert FFN kind: ``experts``)
OPTIONAL_RENDERERS = {"size_sweep": render_size_sweep, "experts": render_experts}


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    return buffer.getvalue()


def write_figures(analysis: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Render every figure into ``out_dir/<name>.png``; returns name → path."""
    out_dir = Path(out_dir)
    paths = {}
    optional = {k: r for k, r in OPTIONAL_RENDERERS.items() if analysis.get(k)}
    for name, render in {**RENDERERS, **optional}.items():
        path = out_dir / f"{name}.png"
        atomic_write_bytes(path, png_bytes(render(analysis)))
        paths[name] = path
    return paths


def render_comparison(analyses: dict[str, dict[str, Any]]) -> Figure:
    """Mean steps per complexity level of several runs on one axes (ood dashed)."""
    fig = _new(6.4, 3.8)
    ax = fig.subplots()
    for label, analysis in analyses.items():
        colour = None
        for split, a in analysis["alignment"].items():
            rows = a["by_complexity"]
            if not rows:
                continue
            line, = ax.plot([r["complexity"] for r in rows], [r["mean_steps"] for r in rows],
                            SPLIT_STYLE.get(split, "-"), marker="o", ms=3, color=colour,
                            label=f"{label} · {split}")
            colour = line.get_color()
    ax.set_xlabel("complexity")
    ax.set_ylabel("mean steps")
    ax.set_title("Runs compared: steps per complexity level", fontsize=10)
    ax.legend(fontsize=7)
    return fig
