"""Generalisation: accuracy and compute per input size, inside vs beyond the training range.

For every size knob (``param_<knob>`` column) and value: token and sequence accuracy, mean
steps and mean complexity, and whether the value lies inside the range the in-distribution
splits cover. Out-of-distribution splits are compared with the in-distribution reference
("allocates more but still fails": more steps per token, lower accuracy). Accuracy on labels
seen in training and on never-seen labels is reported apart, since an unseen label cannot be
predicted whatever the compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ponder.analysis.load import RunData, is_in_distribution
from ponder.eval.records import PARAM_PREFIX

# An ood split "still fails" when its accuracy is this much below the reference's.
FAIL_MARGIN = 0.05


def _group_stats(frame: pd.DataFrame) -> dict[str, Any]:
    n = int(len(frame))
    if n == 0:
        return {"n": 0, "n_examples": 0, "accuracy": None, "seq_accuracy": None,
                "mean_steps": None, "mean_complexity": None}
    return {
        "n": n,
        "n_examples": int(frame["example"].nunique()),
        "accuracy": float(frame["correct"].mean()),
        "seq_accuracy": float(frame.groupby("example")["seq_correct"].first().mean()),
        "mean_steps": float(frame["steps"].mean()),
        "mean_complexity": float(frame["complexity"].mean()),
    }


def training_range(records: pd.DataFrame, column: str) -> tuple[float, float] | None:
    """[min, max] of a knob over the in-distribution splits (None if none was evaluated)."""
    inside = records[records["split"].map(is_in_distribution)][column].dropna()
    if inside.empty or not pd.api.types.is_numeric_dtype(inside):
        return None
    return float(inside.min()), float(inside.max())


def _value(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def by_knob(frame: pd.DataFrame, column: str, train_range: tuple[float, float] | None) -> list[dict]:
    rows = []
    for value, group in frame.groupby(column, sort=True):
        row = {"value": _value(value)} | _group_stats(group)
        if train_range is not None and isinstance(row["value"], (int, float)):
            row["in_train_range"] = bool(train_range[0] <= row["value"] <= train_range[1])
        else:
            row["in_train_range"] = None
        rows.append(row)
    return rows


def seen_unseen(frame: pd.DataFrame) -> dict[str, Any]:
    seen = frame["seen_label"].astype(bool)
    return {"seen": _group_stats(frame[seen]), "unseen": _group_stats(frame[~seen])}


def reference_split(run: RunData) -> str | None:
    """The in-distribution split ood is compared with: valid, else test, else train."""
    for name in ("valid", "test", "train"):
        if name in run.summaries:
            return name
    return None


def is_scalar_column(values: pd.Series) -> bool:
    """A knob a table can be made per value of: numbers or strings, not lists (agreement's
    ``plural`` is one bool per noun)."""
    return not any(isinstance(v, (list, tuple, np.ndarray, dict)) for v in values.dropna())


def analyse(run: RunData) -> dict[str, dict[str, Any]]:
    """Per split: overall numbers, per-knob tables, seen/unseen labels, and (ood) the comparison."""
    knobs = [c for c in run.param_columns if is_scalar_column(run.records[c])]
    ranges = {c: training_range(run.records, c) for c in knobs}
    ref = reference_split(run)
    out: dict[str, dict[str, Any]] = {}
    for split in run.splits:
        frame = run.split(split)
        entry: dict[str, Any] = _group_stats(frame)
        entry["in_distribution"] = is_in_distribution(split)
        entry["by_knob"] = {c[len(PARAM_PREFIX):]: by_knob(frame, c, ranges[c]) for c in knobs}
        entry["train_range"] = {c[len(PARAM_PREFIX):]: ranges[c] for c in knobs}
        entry["labels"] = seen_unseen(frame)
        out[split] = entry
    if ref is not None and out[ref]["n"]:
        for split, entry in out.items():
            if entry["in_distribution"] or entry["n"] == 0:
                continue
            base = out[ref]
            more = entry["mean_steps"] - base["mean_steps"]
            drop = base["accuracy"] - entry["accuracy"]
            entry["vs_in_distribution"] = {
                "reference": ref,
                "delta_mean_steps": more,
                "delta_accuracy": -drop,
                "allocates_more_still_fails": bool(more > 0 and drop > FAIL_MARGIN),
            }
    return out
