"""``analyze_run``: every analysis of one run directory → ``RUN_DIR/analysis.json`` + figures.

``analysis.json`` has the keys ``alignment``, ``generalisation``, ``decision_timing`` and
``compute``, each a dict keyed by split, plus ``run`` (what was read) and ``figures``
(PNG paths relative to RUN_DIR). Every number is computed from the eval records, except
``depth_curve`` (split → rows of accuracy and mean steps at each fixed loop count, with
``trained_max_steps``), copied from ``eval/depth_curve.json`` when ``ponder eval --depths``
wrote one ({} otherwise). ``size_sweep`` (knob → per-size table) is present when
``ponder eval --sweep`` was run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ponder.analysis import alignment, compute, experts, figures, generalisation, timing
from ponder.analysis import sweep as size_sweep
from ponder.analysis.load import RunData, load
from ponder.eval.records import RECORDS_VERSION
from ponder.train.checkpoint import atomic_write_bytes

ANALYSIS_VERSION = 3  # bump when analysis.json changes: cached files are then recomputed
SECTIONS = ("alignment", "generalisation", "decision_timing", "compute")
FIGURE_DIR = "figures"


def to_json(value: Any) -> Any:
    """Plain JSON: numpy scalars → Python, NaN/inf → None, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def analyse(run: RunData, *, seed: int = 0) -> dict[str, Any]:
    """All four sections for a loaded run (no files written)."""
    result: dict[str, Any] = {
        "ponder_analysis_version": ANALYSIS_VERSION,
        "run": {
            "name": run.name,
            "dir": str(run.run_dir),
            "records_version": RECORDS_VERSION,
            "info": run.info,
            "splits": run.splits,
            "summaries": run.summaries,
        },
        "alignment": {},
        "decision_timing": {},
    }
    declared = timing.declared_groups((run.info or {}).get("task"))
    for i, split in enumerate(run.splits):
        frame = run.split(split)
        result["alignment"][split] = alignment.analyse_split(frame, seed=seed + 1000 * i)
        result["decision_timing"][split] = timing.analyse_split(frame, seed=seed + 1000 * i,
                                                                groups_from=run.records,
                                                                declared=declared)
    result["generalisation"] = generalisation.analyse(run)
    result["depth_curve"] = ({"trained_max_steps": run.depth_curve.get("trained_max_steps"),
                              "segments": run.depth_curve.get("segments", 1),
                              "splits": run.depth_curve["splits"]} if run.depth_curve else {})
    result["compute"] = compute.analyse(run)
    if "expert" in run.records.columns:  # models with a routed-expert FFN kind
        result["experts"] = experts.analyse(run, seed=seed)
    sweeps = size_sweep.analyse(run.run_dir, seed=seed)
    if sweeps:
        result["size_sweep"] = sweeps
    return to_json(result)


def analyze_run(run_dir: str | Path, *, seed: int = 0, write: bool = True,
                with_figures: bool = True) -> dict[str, Any]:
    """Analyse ``run_dir``; with ``write`` save ``analysis.json`` (and figures) into it."""
    run = load(run_dir)
    result = analyse(run, seed=seed)
    if with_figures and write:
        paths = figures.write_figures(result, run.run_dir / FIGURE_DIR)
        result["figures"] = {name: str(p.relative_to(run.run_dir)) for name, p in paths.items()}
    if write:
        data = json.dumps(result, indent=1, allow_nan=False).encode()
        atomic_write_bytes(run.run_dir / "analysis.json", data)
    return result
