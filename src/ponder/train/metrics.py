"""Run metrics: one JSON object per line in ``RUN_DIR/metrics.jsonl`` plus TensorBoard scalars.

Only the main process writes. On resume the lines logged after the checkpoint being
resumed are dropped first, so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ponder.train.checkpoint import atomic_write_text

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def truncate_after(path: Path, step: int) -> None:
    """Keep only the records with ``step <= step`` (atomically)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut by a kill mid-write
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class MetricsWriter:
    """Append metrics to JSONL and TensorBoard; inert when ``enabled`` is False (rank > 0)."""

    def __init__(self, *, run_dir: Path, enabled: bool, resume_step: int = 0,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        truncate_after(self.path, resume_step)
        self._fh = open(self.path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR),
                                         purge_step=resume_step + 1 if resume_step else None)

    def log(self, split: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        self._fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{split}/{key}", value, step)

    def flush(self) -> None:
        if self.enabled:
            self._fh.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._fh.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
