"""Synthetic run directories with the exact eval-record schema, for the analysis tests.

A toposort-like task: an example of size ``n`` has ``2n`` input positions, the last ``n``
scored. Per scored token: ``complexity`` (= ``feat_dfs_depth``), an execution feature
``feat_frontier_size`` drawn independently of it, and the static ``feat_n`` / ``param_n``.
The *policy* decides the steps from those columns, so each test knows the right answer.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ponder.eval.records import RECORDS_VERSION

MAX_STEPS = 16
TRAIN_N = (4, 8)
OOD_N = (10, 13)
TOKENS = ("_a", "_b", "_c", "_d")

POLICIES: dict[str, Callable[[pd.DataFrame, np.random.Generator], np.ndarray]] = {
    "complexity": lambda f, rng: f["complexity"].to_numpy(),
    "random": lambda f, rng: rng.integers(1, MAX_STEPS + 1, size=len(f)),
    "input_size": lambda f, rng: f["param_n"].to_numpy(),
    "frontier": lambda f, rng: f["feat_frontier_size"].to_numpy().astype(np.int64),
    "fixed": lambda f, rng: np.full(len(f), MAX_STEPS),
    # tracks complexity loosely: complexity + noise, more steps out of distribution
    "noisy": lambda f, rng: np.clip(f["complexity"].to_numpy() + 1 + rng.integers(-1, 2, size=len(f)),
                                    1, MAX_STEPS),
}


def make_records(split: str, *, n_examples: int, policy: str, seed: int = 0) -> pd.DataFrame:
    """One split's records (a DataFrame with the schema's columns and dtypes)."""
    # zlib.crc32, not hash(): str hashes change from process to process (PYTHONHASHSEED)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()) % 1000, n_examples])
    lo, hi = OOD_N if split == "ood" else TRAIN_N
    rows = []
    for ex in range(n_examples):
        n = int(rng.integers(lo, hi + 1))
        for slot in range(n):
            position = n + slot
            complexity = int(rng.integers(0, n))
            label = int(rng.integers(0, n))
            rows.append({
                "example": ex, "split": split, "position": position,
                "token": TOKENS[int(rng.integers(0, len(TOKENS)))], "target": str(label),
                "complexity": complexity, "max_steps": MAX_STEPS,
                "seen_label": label < TRAIN_N[1],
                "param_n": n,
                "feat_position": float(position), "feat_n": float(n),
                "feat_frontier_size": float(rng.integers(1, n + 1)),
                "feat_dfs_depth": float(complexity),
                "feat_newly_enabled": float(rng.integers(0, 3)) if slot else np.nan,
            })
    frame = pd.DataFrame(rows)
    p_correct = 0.9 if split != "ood" else 0.6
    correct = (rng.random(len(frame)) < p_correct) & frame["seen_label"].to_numpy()
    frame["correct"] = correct
    frame["prediction"] = np.where(correct, frame["target"], "x")
    frame["seq_correct"] = frame.groupby("example")["correct"].transform("all")
    frame["steps"] = np.clip(POLICIES[policy](frame, rng), 0, MAX_STEPS).astype(np.int64)
    order = ["example", "split", "position", "token", "target", "prediction", "correct",
             "complexity", "steps", "max_steps", "seen_label", "seq_correct"]
    return frame[order + [c for c in frame.columns if c not in order]]


def write_records(path: Path, frame: pd.DataFrame, *, info: dict, version: int = RECORDS_VERSION) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"ponder_records_version"] = str(version).encode()
    meta[b"ponder_run"] = json.dumps(info).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


def write_run(root: Path, name: str = "run", *, policy: str = "noisy",
              splits: tuple[str, ...] = ("valid", "ood"), n_examples: int = 60, seed: int = 0,
              version: int = RECORDS_VERSION, wall_per_step_us: float = 20.0,
              with_summary: bool = True) -> Path:
    """A fake ``RUN_DIR`` (config.yaml, eval/<split>.parquet + .json); returns its path."""
    run_dir = Path(root) / name
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    info = {"policy": policy, "task": "synth_toposort", "max_steps": MAX_STEPS,
            "model_kind": "recurrent", "d_model": 64, "d_ff": 256, "prelude": 1, "core": 1,
            "coda": 1, "vocab_size": 40}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"task": {"name": "synth_toposort"}, "policy": {"name": policy},
         "model": {"d_model": 64, "max_steps": MAX_STEPS}}))
    for split in splits:
        frame = make_records(split, n_examples=n_examples, policy=policy, seed=seed)
        write_records(run_dir / "eval" / f"{split}.parquet", frame, info=info, version=version)
        if with_summary:
            n = len(frame)
            summary = {
                "token_acc": float(frame["correct"].mean()),
                "seq_acc": float(frame.groupby("example")["seq_correct"].first().mean()),
                "mean_steps": float(frame["steps"].mean()), "max_steps": MAX_STEPS,
                "token_steps": int(frame["steps"].sum()),
                "wall_s": float(frame["steps"].sum() * wall_per_step_us * 1e-6 + 0.01),
                "n_tokens": n, "fixed_token_steps": n * MAX_STEPS,
            }
            (run_dir / "eval" / f"{split}.json").write_text(json.dumps(summary))
    return run_dir
