"""One self-contained HTML page comparing runs side by side (figures embedded as base64).

Sections: a summary table (accuracy in / out of distribution, mean steps, ρ, compute and
time saved), a cross-run figure, each run's figures side by side, the decision-timing
numbers, and per-example views that colour each scored token by the steps it took next to
its complexity. No JavaScript, no external resources: the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps

from ponder.analysis import figures
from ponder.analysis.analyze import ANALYSIS_VERSION, SECTIONS, analyze_run
from ponder.analysis.load import RunData, is_in_distribution, load
from ponder.errors import ConfigError

EXAMPLES_PER_SPLIT = 2
MAX_TOKENS_SHOWN = 48
CMAP = colormaps["viridis"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; font-size: 13px; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
#summary td:not(.l), #timing td:not(.l) { white-space: nowrap; }
.figs td { vertical-align: top; text-align: center; border: none; }
.figwrap { overflow-x: auto; }
.figs img { width: 100%; min-width: 440px; max-width: 900px; }
.ex { margin: 6px 0 14px 0; overflow-x: auto; }
.ex table td { border: none; padding: 1px; text-align: center; font-family: monospace; font-size: 12px; min-width: 28px; }
.ex td.h { text-align: left; font-family: system-ui, sans-serif; color: #555; padding-right: 6px; }
.ex td.wrong { outline: 2px solid #d62728; outline-offset: -2px; }
.legend { display: inline-block; width: 160px; height: 10px; vertical-align: middle;
  background: linear-gradient(to right, %GRADIENT%); }
.note { color: #666; font-size: 13px; }
"""


def _colour(value: float) -> tuple[str, str]:
    """(background, text) colours for a value in [0, 1]."""
    r, g, b, _ = CMAP(float(np.clip(value, 0, 1)))
    text = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#fff"
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}", text


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cached_analysis(run: RunData) -> dict[str, Any] | None:
    """``analysis.json`` if it is current (same version, newer than every record file)."""
    path = run.run_dir / "analysis.json"
    if not path.exists():
        return None
    newest = max(p.stat().st_mtime for p in (run.run_dir / "eval").glob("*"))
    if path.stat().st_mtime < newest:
        return None
    try:
        cached = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    if not isinstance(cached, dict) or cached.get("ponder_analysis_version") != ANALYSIS_VERSION:
        return None
    if (cached.get("run") or {}).get("splits") != run.splits:
        return None
    if any(section not in cached for section in SECTIONS):
        return None
    return cached


def _figure_png(run: RunData, analysis: dict[str, Any], name: str) -> bytes:
    """The figure ``analyze_run`` saved alongside this analysis, else rendered afresh."""
    saved = (analysis.get("figures") or {}).get(name)
    path = run.run_dir / saved if saved else None
    if path is not None and path.is_file():  # analyze_run writes figures with the JSON
        return path.read_bytes()
    render = figures.RENDERERS.get(name) or figures.OPTIONAL_RENDERERS[name]
    return figures.png_bytes(render(analysis))


def _reference(splits: Sequence[str]) -> str | None:
    return next((s for s in ("valid", "test", "train") if s in splits), None)


def _ood(splits: Sequence[str]) -> str | None:
    return next((s for s in splits if not is_in_distribution(s)), None)


def _fixed_baseline(entries: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any] | None:
    """A compared run of the same task and model size that always ran max_steps (the baseline)."""
    same = ("task", "max_steps", "d_model", "model_kind")
    for other in entries:
        if other is entry or any(other["run"].info.get(k) != entry["run"].info.get(k) for k in same):
            continue
        c = other["analysis"]["compute"]
        if other["run"].info.get("policy") == "fixed" or all(v["step_ratio"] == 1 for v in c.values()):
            return other
    return None


def _time_saved(entry, baseline, split) -> float | None:
    if baseline is None or split is None:
        return None
    mine = entry["analysis"]["compute"].get(split, {}).get("wall_us_per_token")
    theirs = baseline["analysis"]["compute"].get(split, {}).get("wall_us_per_token")
    if mine is None or not theirs:
        return None
    return 1 - mine / theirs


def _efficiency(entry, baseline, split) -> float | None:
    """Compute ratio / time ratio vs the fixed run: 1 = time shrinks exactly with token-steps."""
    saved = _time_saved(entry, baseline, split)
    ratio = entry["analysis"]["compute"].get(split, {}).get("step_ratio") if split else None
    if saved is None or ratio is None or saved >= 1:
        return None
    return ratio / (1 - saved)


def _summary_table(entries: list[dict[str, Any]]) -> str:
    head = ("run", "policy", "task", "acc (in)", "acc (ood)", "ood acc seen / unseen labels",
            "mean steps in / ood", "ρ in [95% CI]", "ρ ood", "token-steps saved (in)",
            "FLOPs saved (in)", "wall time saved vs fixed (in)", "time efficiency (in)")
    rows = []
    for e in entries:
        a, run = e["analysis"], e["run"]
        ref, ood = _reference(run.splits), _ood(run.splits)
        g = a["generalisation"]
        ref_g = g.get(ref, {}) if ref else {}
        ood_g = g.get(ood, {}) if ood else {}
        rho_ref = a["alignment"].get(ref, {}) if ref else {}
        ci = rho_ref.get("ci95")
        rho_text = _fmt(rho_ref.get("rho"), ".2f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        labels = ood_g.get("labels", {})
        seen_unseen = (f"{_fmt(labels.get('seen', {}).get('accuracy'))} / "
                       f"{_fmt(labels.get('unseen', {}).get('accuracy'))}") if labels else "—"
        comp = a["compute"].get(ref, {}) if ref else {}
        base = _fixed_baseline(entries, e)
        cells = [
            f'<td class="l">{html.escape(e["label"])}</td>',
            f'<td class="l">{_fmt(run.info.get("policy"))}</td>',
            f'<td class="l">{_fmt(run.info.get("task"))}</td>',
            f"<td>{_fmt(ref_g.get('accuracy'))}</td>",
            f"<td>{_fmt(ood_g.get('accuracy'))}</td>",
            f"<td>{seen_unseen}</td>",
            f"<td>{_fmt(ref_g.get('mean_steps'), '.2f')} / {_fmt(ood_g.get('mean_steps'), '.2f')}</td>",
            f"<td>{rho_text}</td>",
            f"<td>{_fmt((a['alignment'].get(ood) or {}).get('rho') if ood else None, '.2f')}</td>",
            f"<td>{_pct(comp.get('steps_saved'))}</td>",
            f"<td>{_pct((comp.get('flops') or {}).get('saved'))}</td>",
            f"<td>{_pct(_time_saved(e, base, ref))}</td>",
            f"<td>{_fmt(_efficiency(e, base, ref), '.2f')}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th class="l">{h}</th>' if i < 3 else f"<th>{h}</th>" for i, h in enumerate(head))
    return (f'<table id="summary"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '<p class="note">in = the valid split (else test/train); ood = the out-of-distribution split. '
            "ρ: Spearman correlation of steps with complexity. Wall time saved compares µs per token "
            "with a fixed-policy run of the same task and model size in this report (— when there is none); "
            "time efficiency = (token-steps / fixed token-steps) / (time / fixed time): 1 when "
            "time shrinks exactly with the compute, below 1 when it shrinks less.</p>")


def _figure_grid(entries: list[dict[str, Any]]) -> str:
    header = "".join(f"<th>{html.escape(e['label'])}</th>" for e in entries)
    rows = []
    for name in figures.RENDERERS:
        cells = "".join(f"<td>{_img(e['figures'][name], name + ' of ' + e['label'])}</td>" for e in entries)
        rows.append(f"<tr>{cells}</tr>")
    return f'<div class="figwrap"><table class="figs"><tr>{header}</tr>{"".join(rows)}</table></div>'


def _r2_ci(probe: dict[str, Any] | None, group: str) -> str:
    """The gradient-boosting probe's held-out R² of ``group`` with its bootstrap CI."""
    r2 = ((probe or {}).get("r2") or {}).get(group)
    ci = ((probe or {}).get("ci") or {}).get(group)
    if r2 is None:
        return "—"
    return f"{r2:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _timing_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        for split, t in e["analysis"]["decision_timing"].items():
            r2 = t.get("r2") or {}
            gi = t.get("group_importance") or {}
            top = ", ".join(f"{f['feature']} ({f['importance']:.2f})" for f in t.get("feature_importance", [])[:3])
            rows.append(
                f'<tr><td class="l">{html.escape(e["label"])}</td><td class="l">{html.escape(split)}</td>'
                f"<td>{_fmt(r2.get('static'), '.2f')}</td><td>{_fmt(r2.get('execution'), '.2f')}</td>"
                f"<td>{_fmt(r2.get('both'), '.2f')}</td>"
                f"<td>{_fmt((t.get('r2_partition') or {}).get('static_unique'), '.2f')}</td>"
                f"<td>{_fmt((t.get('r2_partition') or {}).get('execution_unique'), '.2f')}</td>"
                f"<td>{_fmt((t.get('r2_partition') or {}).get('shared'), '.2f')}</td>"
                f"<td>{_fmt((gi.get('static') or {}).get('mean'), '.2f')}</td>"
                f"<td>{_fmt((gi.get('execution') or {}).get('mean'), '.2f')}</td>"
                f"<td>{_pct(t.get('static_share'))}</td>"
                f"<td>{_r2_ci(t.get('nonlinear'), 'static')}</td>"
                f"<td>{_r2_ci(t.get('nonlinear'), 'execution')}</td>"
                f"<td>{html.escape(str((t.get('nonlinear') or {}).get('explained_by') or '—'))}</td>"
                f'<td class="l">{html.escape(top or t.get("note", ""))}</td></tr>')
    return ('<table id="timing"><tr><th class="l">run</th><th class="l">split</th><th>R² static</th>'
            "<th>R² execution</th><th>R² both</th><th>only static</th><th>only execution</th>"
            "<th>shared</th><th>importance static</th>"
            '<th>importance execution</th><th>static share</th><th>GB R² static [95% CI]</th>'
            '<th>GB R² execution [95% CI]</th><th>GB: explained by</th>'
            '<th class="l">top features</th></tr>'
            + "".join(rows) + "</table>")


def _experts_section(entries: list[dict[str, Any]]) -> str:
    """Expert × complexity (share of each complexity level's tokens per expert) and the mutual
    information between expert and complexity, for runs with a routed-expert FFN kind."""
    parts = []
    for e in entries:
        if e["analysis"].get("experts"):
            png = _figure_png(e["run"], e["analysis"], "experts")
            parts.append(f'<div class="figwrap">{_img(png, "expert × complexity of " + e["label"])}</div>')
        for split, t in (e["analysis"].get("experts") or {}).items():
            experts = t["experts"]
            head = "".join(f"<th>e{x}</th>" for x in experts)
            rows = []
            for c, counts in t["table"].items():
                total = sum(counts.values()) or 1
                cells = []
                for x in experts:
                    share = counts.get(str(x), counts.get(x, 0)) / total
                    bg, fg = _colour(share)
                    cells.append(f'<td style="background:{bg};color:{fg}">{share:.2f}</td>')
                rows.append(f"<tr><td>{html.escape(str(c))}</td>{''.join(cells)}</tr>")
            parts.append(
                f'<p>{html.escape(e["label"])} · {html.escape(split)}: I(expert; complexity) = '
                f'{t["mutual_information_bits"]:.3f} bits (normalised {t["normalised"]:.2f}; '
                f'complexity shuffled: {t["shuffled_bits"]:.3f} bits), {t["tokens"]} tokens</p>'
                f'<table class="experts"><tr><th>complexity</th>{head}</tr>{"".join(rows)}</table>')
    if not parts:
        return ""
    return ("<h2>Experts and complexity</h2><p class=\"note\">Per complexity level, the share of its "
            "tokens whose first-choice expert (last routed FFN entered) is each expert.</p>" + "".join(parts))


def _size_sweep_section(entries: list[dict[str, Any]]) -> str:
    """Per run and swept knob: accuracy, steps and ρ per size, the training range marked
    (``ponder eval --sweep``); nothing when no run was swept."""
    parts = []
    for e in entries:
        if e["analysis"].get("size_sweep"):
            png = _figure_png(e["run"], e["analysis"], "size_sweep")
            parts.append(f'<div class="figwrap">{_img(png, "size sweep of " + e["label"])}</div>')
        for knob, sw in (e["analysis"].get("size_sweep") or {}).items():
            rows = []
            for r in sw["rows"]:
                where = "train" if r["in_train_range"] else ("ood" if r["in_ood_range"] else "")
                style = ' style="background:#e8e8e8"' if r["in_train_range"] else ""
                ci = r.get("rho_ci95")
                rho = _fmt(r["rho"], ".2f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                rows.append(f"<tr{style}><td>{r['size']}</td><td class=\"l\">{where}</td>"
                            f"<td>{_fmt(r['accuracy'])}</td><td>{_fmt(r['seq_accuracy'])}</td>"
                            f"<td>{_fmt(r['mean_steps'], '.2f')}</td><td>{rho}</td>"
                            f"<td>{r['n']}</td><td>{r['n_examples']}</td></tr>")
            parts.append(
                f'<p>{html.escape(e["label"])} · {html.escape(str(sw["spec"]))}: training range '
                f'{html.escape(str(sw["train_range"]))}, ood range {html.escape(str(sw["ood_range"]))}; '
                f'ρ(steps, size) over all tokens {_fmt(sw["rho_steps_size"], ".2f")}</p>'
                f'<table class="sweep"><tr><th>{html.escape(knob)}</th><th class="l">range</th>'
                "<th>token acc</th><th>seq acc</th><th>mean steps</th><th>ρ [95% CI]</th>"
                f'<th>tokens</th><th>examples</th></tr>{"".join(rows)}</table>')
    if not parts:
        return ""
    return ("<h2>Size sweep: accuracy and steps vs size</h2><p class=\"note\">From "
            "<code>ponder eval RUN_DIR --sweep KNOB=LO..HI</code>: the run scored with the size "
            "pinned to each value; grey rows and the grey band: the training range, hatched: "
            "the ood range.</p>" + "".join(parts))


def pick_examples(frame: pd.DataFrame, k: int = EXAMPLES_PER_SPLIT) -> list[int]:
    """The k examples with the most distinct complexity levels (ties: lowest id)."""
    if frame.empty:
        return []
    levels = frame.groupby("example")["complexity"].nunique()
    order = sorted(levels.items(), key=lambda t: (-t[1], t[0]))
    return [int(ex) for ex, _ in order[:k]]


def _example_view(frame: pd.DataFrame, example: int, max_steps: int, max_complexity: int) -> str:
    rows = frame[frame["example"] == example].sort_values("position")
    shown = rows.head(MAX_TOKENS_SHOWN)
    tok_cells, step_cells, comp_cells = [], [], []
    for r in shown.itertuples(index=False):
        bg, fg = _colour(r.steps / max(max_steps, 1))
        wrong = "" if r.correct else " wrong"
        title = html.escape(f"pos {r.position}: target {r.target}, predicted {r.prediction}, "
                            f"{r.steps} steps, complexity {r.complexity}", quote=True)
        tok_cells.append(f'<td class="tok{wrong}" style="background:{bg};color:{fg}" '
                         f'title="{title}">{html.escape(str(r.token))}</td>')
        step_cells.append(f'<td style="background:{bg};color:{fg}">{r.steps}</td>')
        cbg, cfg = _colour(r.complexity / max(max_complexity, 1))
        comp_cells.append(f'<td style="background:{cbg};color:{cfg}">{r.complexity}</td>')
    more = f" (first {MAX_TOKENS_SHOWN} of {len(rows)} scored tokens)" if len(rows) > len(shown) else ""
    acc = rows["correct"].mean()
    return (f'<div class="ex"><div class="note">example {example}: {len(rows)} scored tokens, '
            f"accuracy {acc:.2f}{more}</div><table>"
            f'<tr><td class="h">token</td>{"".join(tok_cells)}</tr>'
            f'<tr><td class="h">steps</td>{"".join(step_cells)}</tr>'
            f'<tr><td class="h">complexity</td>{"".join(comp_cells)}</tr></table></div>')


def _examples(entries: list[dict[str, Any]]) -> str:
    parts = []
    for e in entries:
        run = e["run"]
        max_steps = int(run.info.get("max_steps") or run.records["max_steps"].max())
        parts.append(f"<h3>{html.escape(e['label'])}</h3>")
        for split in run.splits:
            frame = run.split(split)
            max_c = int(frame["complexity"].max()) if len(frame) else 1
            parts.append(f"<h4>{html.escape(split)}</h4>")
            for ex in pick_examples(frame):
                parts.append(_example_view(frame, ex, max_steps, max_c))
    return "".join(parts)


def _label_runs(runs: list[RunData]) -> list[str]:
    labels = [r.label for r in runs]
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[i] = f"{label} #{i + 1}"
    return labels


def build_html(run_dirs: Sequence[str | Path], *, seed: int = 0) -> str:
    """The report page for ``run_dirs`` (analysing those without a current analysis.json)."""
    if not run_dirs:
        raise ConfigError("ponder report needs at least one run directory")
    runs = [load(d) for d in run_dirs]
    entries = []
    for run, label in zip(runs, _label_runs(runs)):
        analysis = _cached_analysis(run) or analyze_run(run.run_dir, seed=seed)
        pngs = {name: _figure_png(run, analysis, name) for name in figures.RENDERERS}
        entries.append({"run": run, "label": label, "analysis": analysis, "figures": pngs})
    comparison = figures.png_bytes(figures.render_comparison({e["label"]: e["analysis"] for e in entries}))
    gradient = ", ".join(_colour(v)[0] for v in np.linspace(0, 1, 6))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ponder report</title>
<style>{CSS.replace("%GRADIENT%", gradient)}</style></head>
<body>
<h1>ponder report</h1>
<p class="note">{len(entries)} run(s), generated {stamp}. How to read every number and figure: docs/analysis.md.</p>
<h2>Summary</h2>
{_summary_table(entries)}
<h2>Runs compared</h2>
{_img(comparison, "steps per complexity level, all runs")}
<h2>Figures</h2>
<p class="note">Per run (columns): alignment heat maps, steps per complexity level, generalisation
(accuracy and steps vs size, seen vs unseen labels), decision timing (R²), compute vs fixed depth.</p>
{_figure_grid(entries)}
<h2>Decision timing</h2>
{_timing_table(entries)}
{_experts_section(entries)}
{_size_sweep_section(entries)}
<h2>Per-example views</h2>
<p class="note">Each scored token coloured by the steps it took (0 <span class="legend"></span> max steps),
under it its complexity on the same colour map, from 0 to the split's largest complexity.
A red outline marks a wrong prediction; hover a token for its target and prediction.</p>
{_examples(entries)}
</body></html>
"""


def write_report(run_dirs: Sequence[str | Path], out_path: str | Path, *, seed: int = 0) -> Path:
    """Write the HTML report atomically; returns its path."""
    out_path = Path(out_path)
    page = build_html(run_dirs, seed=seed)
    figures.atomic_write_bytes(out_path, page.encode("utf-8"))
    return out_path
