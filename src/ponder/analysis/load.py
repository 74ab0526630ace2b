"""Read a run directory's evaluation records into pandas (the analysis' only input).

A run directory holds ``config.yaml``, ``eval/<split>.parquet`` (per-token records, schema in
:mod:`ponder.eval.records`) and ``eval/<split>.json`` (the split's summary). Everything the
analysis reports is computed from these files; nothing is re-run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ponder.errors import CheckpointError, ConfigError
from ponder.eval.records import FEATURE_PREFIX, FIXED_COLUMNS, PARAM_PREFIX, RECORDS_VERSION

# Splits drawn from the training distribution; every other split is out of distribution.
IN_DISTRIBUTION = ("train", "valid", "test")
# Order in which splits are listed (unknown names go last, alphabetically).
SPLIT_ORDER = ("train", "valid", "test", "ood")


@dataclass
class RunData:
    """One run's evaluation data.

    records    all splits' per-token rows, concatenated (``split`` tells them apart)
    summaries  split -> the ``eval/<split>.json`` dict (derived from the records if absent)
    info       the ``ponder_run`` metadata of the records (policy, task, max_steps, ...)
    config     the parsed ``config.yaml`` ({} when the run has none)
    depth_curve  ``eval/depth_curve.json`` (``ponder eval --depths``), {} when absent
    """

    run_dir: Path
    records: pd.DataFrame
    summaries: dict[str, dict[str, Any]]
    info: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    depth_curve: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def splits(self) -> list[str]:
        return sort_splits(self.summaries)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split (a view-free copy is not needed: callers only read)."""
        return self.records[self.records["split"] == name]

    @property
    def param_columns(self) -> list[str]:
        return [c for c in self.records.columns if c.startswith(PARAM_PREFIX)]

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.records.columns if c.startswith(FEATURE_PREFIX)]

    @property
    def mechanism(self) -> str | None:
        """What decides the compute: the policy, or the model itself when its kind adapts the
        input instead of the depth (AdaTape runs its steps under ``fixed``)."""
        if self.info.get("model_kind") == "adatape":
            return "adatape"
        return self.info.get("policy")

    @property
    def label(self) -> str:
        """A short human label: ``<run dir name> (<mechanism>)`` (only when it differs)."""
        mechanism = self.mechanism
        return f"{self.name} ({mechanism})" if mechanism and mechanism != self.name else self.name


def sort_splits(names) -> list[str]:
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return sorted(names, key=lambda s: (rank.get(s, len(rank)), s))


def is_in_distribution(split: str) -> bool:
    return split in IN_DISTRIBUTION


def _metadata(path: Path) -> dict[bytes, bytes]:
    try:
        return pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise CheckpointError(f"cannot read eval records {path}: {exc}".splitlines()[0]) from exc


def _check_version(path: Path, meta: dict[bytes, bytes]) -> dict[str, Any]:
    raw = meta.get(b"ponder_records_version")
    if raw is None:
        raise CheckpointError(f"{path} has no ponder_records_version metadata; not ponder eval records")
    try:
        version = int(raw.decode())
    except ValueError:
        raise CheckpointError(f"{path}: ponder_records_version {raw.decode(errors='replace')!r} is not an integer")
    if version != RECORDS_VERSION:
        raise CheckpointError(f"{path} holds records of version {version}; this ponder reads version "
                              f"{RECORDS_VERSION} (re-run `ponder eval`)")
    try:
        info = json.loads(meta.get(b"ponder_run", b"{}").decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: ponder_run metadata is not JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: ponder_run metadata must be a JSON object")
    return info


def _read_records(path: Path) -> pd.DataFrame:
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise CheckpointError(f"cannot read eval records {path}: {exc}".splitlines()[0]) from exc
    missing = [c for c in FIXED_COLUMNS if c not in frame.columns]
    if missing:
        raise CheckpointError(f"{path} lacks record columns: {', '.join(missing)}")
    return frame


def summary_from_records(frame: pd.DataFrame) -> dict[str, Any]:
    """The ``eval/<split>.json`` numbers that can be recomputed from records (no wall time)."""
    n = int(len(frame))
    max_steps = int(frame["max_steps"].max()) if n else 0
    return {
        "token_acc": float(frame["correct"].mean()) if n else float("nan"),
        "seq_acc": float(frame.groupby("example")["seq_correct"].first().mean()) if n else float("nan"),
        "mean_steps": float(frame["steps"].mean()) if n else float("nan"),
        "max_steps": max_steps,
        "token_steps": int(frame["steps"].sum()),
        "n_tokens": n,
        "fixed_token_steps": int(frame["max_steps"].sum()),
        "wall_s": None,
    }


def _read_summary(path: Path, frame: pd.DataFrame) -> dict[str, Any]:
    derived = summary_from_records(frame)
    if not path.exists():
        return derived | {"derived_from_records": True}
    try:
        given = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read eval summary {path}: {exc}") from exc
    if not isinstance(given, dict):
        raise CheckpointError(f"eval summary {path} must be a JSON object")
    return derived | given  # the eval's own numbers (e.g. wall_s) win


def _read_depth_curve(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        curve = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(curve, dict) or not isinstance(curve.get("splits"), dict):
        raise CheckpointError(f"{path} must be a JSON object with a 'splits' mapping")
    return curve


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"malformed {path}: expected a mapping at top level")
    return config


def load(run_dir: str | Path, *, splits: list[str] | None = None) -> RunData:
    """Load every evaluated split of ``run_dir`` (or only ``splits``).

    Raises :class:`CheckpointError` when the directory, its records or the requested splits
    are missing, or when the records are of another :data:`RECORDS_VERSION`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    eval_dir = run_dir / "eval"
    paths = {p.stem: p for p in sorted(eval_dir.glob("*.parquet"))} if eval_dir.is_dir() else {}
    if not paths:
        raise CheckpointError(f"no eval records in {eval_dir} (run `ponder eval {run_dir}` first)")
    if splits is not None:
        unknown = [s for s in splits if s not in paths]
        if unknown:
            raise CheckpointError(f"{run_dir} has no eval records for split(s) {', '.join(unknown)}; "
                                  f"evaluated: {', '.join(sort_splits(paths))}")
        paths = {s: paths[s] for s in splits}
    frames, summaries, info = [], {}, {}
    for split in sort_splits(paths):
        path = paths[split]
        meta_info = _check_version(path, _metadata(path))
        info = info or meta_info
        frame = _read_records(path)
        frame["split"] = split  # the file name is authoritative
        frames.append(frame)
        summaries[split] = _read_summary(eval_dir / f"{split}.json", frame)
    records = pd.concat(frames, ignore_index=True)
    if "max_steps" not in info and len(records):
        info["max_steps"] = int(records["max_steps"].max())
    return RunData(run_dir=run_dir, records=records, summaries=summaries, info=info,
                   config=_read_config(run_dir), depth_curve=_read_depth_curve(eval_dir / "depth_curve.json"))
