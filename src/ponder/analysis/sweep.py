"""Size sweep: accuracy, mean steps and ρ(steps, complexity) per size of a size knob.

Reads what ``ponder eval RUN_DIR --sweep KNOB=LO..HI`` wrote (:mod:`ponder.eval.sweep`):
``eval/sweep/<KNOB>.json`` (the index) and ``eval/sweep/<KNOB>/<size>.parquet`` (records).
Per size: tokens, examples, token and sequence accuracy, mean steps, mean complexity, ρ with
its bootstrap interval over examples, and whether the size lies in the training / ood range.
Across the sweep: ρ(steps, size) over every token (does compute grow with the size?).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from ponder.analysis import alignment
from ponder.analysis.generalisation import _group_stats
from ponder.analysis.load import _check_version, _metadata, _read_records
from ponder.errors import CheckpointError

SWEEP_DIR = Path("eval") / "sweep"
N_BOOTSTRAP = 300  # per size; a sweep has tens of sizes


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read sweep index {path}: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get("sizes"), list):
        raise CheckpointError(f"sweep index {path} must be a JSON object with a 'sizes' list")
    return index


def load_sweep(run_dir: Path, knob: str) -> tuple[dict[str, Any], dict[int, pd.DataFrame]]:
    """(index, size → records) of one knob's sweep; every listed size must have records."""
    index = _read_index(run_dir / SWEEP_DIR / f"{knob}.json")
    frames = {}
    for size in index["sizes"]:
        path = run_dir / SWEEP_DIR / knob / f"{size}.parquet"
        if not path.exists():
            raise CheckpointError(f"sweep {knob}: no records for size {size} ({path}); re-run the sweep")
        _check_version(path, _metadata(path))
        frames[int(size)] = _read_records(path)
    return index, frames


def _in(size: int, rng: list | None) -> bool | None:
    return None if not rng else bool(rng[0] <= size <= rng[1])


def analyse_knob(index: dict[str, Any], frames: dict[int, pd.DataFrame], *, seed: int = 0
                 ) -> dict[str, Any]:
    train, ood = index.get("train_range"), index.get("ood_range")
    rows = []
    for i, (size, frame) in enumerate(sorted(frames.items())):
        corr = alignment.correlation(frame, seed=seed + i, n_boot=N_BOOTSTRAP)
        rows.append({"size": size, **_group_stats(frame), "rho": corr["rho"], "rho_ci95": corr["ci95"],
                     "in_train_range": _in(size, train), "in_ood_range": _in(size, ood)})
    everything = pd.concat([f.assign(_size=s) for s, f in frames.items()], ignore_index=True)
    rho_size = None
    if len(everything) >= 3 and everything["steps"].nunique() > 1 and everything["_size"].nunique() > 1:
        rho_size = float(stats.spearmanr(everything["steps"], everything["_size"]).statistic)
    return {"knob": index.get("knob"), "spec": index.get("spec"), "task": index.get("task"),
            "n_per_size": index.get("n"), "checkpoint_step": index.get("checkpoint_step"),
            "train_range": train, "ood_range": ood, "rows": rows, "rho_steps_size": rho_size}


def analyse(run_dir: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Knob → the per-size table of every sweep of the run ({} when none was run)."""
    root = Path(run_dir) / SWEEP_DIR
    if not root.is_dir():
        return {}
    out = {}
    for path in sorted(root.glob("*.json")):
        index, frames = load_sweep(Path(run_dir), path.stem)
        out[path.stem] = analyse_knob(index, frames, seed=seed)
    return out

