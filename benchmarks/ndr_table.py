"""NDR length generalisation on table_lookup: accuracy by composition depth, one markdown
row per run (the tables of docs/results/routing.md).

    .venv/bin/python benchmarks/ndr_table.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR needs a depth sweep, ``ponder eval RUN_DIR --sweep depth=LO..HI``
(``eval/sweep/depth/<d>.parquet``). Per depth d (d functions applied to one argument) three
figures: the final answer (the leftmost function token's value, the whole composition — the
figure NDR reports), every function token (each intermediate value), and the whole example
(every token right). Depths inside the training range are marked with *.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def by_depth(run: Path) -> tuple[dict[int, tuple[float, float, float]], set[int]]:
    """depth → (final-answer acc, token acc, example acc); and the depths in training range."""
    index_path = run / "eval" / "sweep" / "depth.json"
    if not index_path.exists():
        raise FileNotFoundError(f"{run}: no depth sweep (run ponder eval {run} --sweep depth=1..12)")
    index = json.loads(index_path.read_text())
    lo, hi = index["train_range"]
    out = {}
    for d in index["sizes"]:
        frame = pd.read_parquet(run / "eval" / "sweep" / "depth" / f"{d}.parquet")
        frame = frame[frame["target"].notna()]
        final = frame[frame["complexity"] == d]          # the leftmost function: all d applied
        example = frame.groupby("example")["correct"].all()
        out[d] = (float(final["correct"].mean()), float(frame["correct"].mean()), float(example.mean()))
    return out, set(range(lo, hi + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    try:
        tables = {run.name: by_depth(run) for run in args.runs}
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    depths = sorted({d for t, _ in tables.values() for d in t})
    train = set.union(*(s for _, s in tables.values()))
    head = " | ".join(f"{d}{'*' if d in train else ''}" for d in depths)
    for k, title in enumerate(("final answer", "every function token", "whole example")):
        print(f"\n{title} accuracy by depth (* = training depths)\n")
        print(f"| run | {head} |")
        print("|---|" + "---:|" * len(depths))
        for name, (t, _) in tables.items():
            print(f"| {name} | " + " | ".join(f"{t[d][k]:.3f}" if d in t else "—" for d in depths) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
