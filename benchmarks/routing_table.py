"""Routing vs halting on finished runs: accuracy, FLOPs per token and how compute follows
complexity, one markdown row per run (the tables of docs/results/routing.md).

    .venv/bin/python benchmarks/routing_table.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR needs ``ponder eval RUN_DIR`` records (``eval/valid.parquet``,
``eval/ood.parquet``) with the measured ``flops`` column. FLOPs are relative to the first
run's valid mean. ρ is Spearman's rank correlation over the valid tokens between what a
token used and the task's per-token complexity; "—" where one side is constant. FLOPs
count the blocks a token entered with the keys it saw, so they also grow with the
example's length; "within" divides each token's FLOPs by its example's mean first (what
routing and halting decide inside an example). Steps: core applications. The second table
is the mean FLOPs per token per complexity level (valid), relative to the first run.
``--acc`` adds a third: token accuracy per complexity level, valid and ood (``valid / ood``;
"—" where a split has no token of that level).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats


def rho(a: np.ndarray, b: np.ndarray) -> str:
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return "—"
    return f"{stats.spearmanr(a, b).statistic:.2f}"


def load(run: Path, split: str) -> pd.DataFrame:
    frame = pd.read_parquet(run / "eval" / f"{split}.parquet")
    return frame[frame["target"].notna()] if "target" in frame.columns else frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--acc", action="store_true", help="also accuracy per complexity level")
    args = parser.parse_args()
    rows, levels, accs = [], {}, {}
    base = None
    for run in args.runs:
        valid, ood = load(run, "valid"), load(run, "ood")
        result = json.loads((run / "result.json").read_text())
        f = valid["flops"].to_numpy()
        base = base if base is not None else float(f.mean())
        c = valid["complexity"].to_numpy()
        within = (valid["flops"] / valid.groupby("example")["flops"].transform("mean")).to_numpy()
        rows.append(f"| {run.name} | {valid['correct'].mean():.3f} | {ood['correct'].mean():.3f} | "
                    f"{valid['steps'].mean():.2f} | {f.mean() / base:.3f} | {rho(f, c)} | "
                    f"{rho(np.round(within, 9), c)} | "
                    f"{rho(valid['steps'].to_numpy(), c)} | {result['step']} | {result['train_s']:.0f} |")
        levels[run.name] = valid.groupby("complexity")["flops"].mean() / base
        accs[run.name] = (valid.groupby("complexity")["correct"].mean(),
                          ood.groupby("complexity")["correct"].mean())
    print("| run | valid acc | ood acc | mean steps (valid) | FLOPs/token vs first | "
          "ρ(FLOPs, complexity) | ρ within examples | ρ(steps, complexity) | steps trained | "
          "train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    table = pd.DataFrame(levels).T
    print("\n| run | " + " | ".join(str(int(c)) for c in table.columns) + " |")
    print("|---|" + "---:|" * len(table.columns))
    for name, row in table.iterrows():
        print(f"| {name} | " + " | ".join("—" if np.isnan(v) else f"{v:.2f}" for v in row) + " |")
    if args.acc:
        cells = lambda acc, c: f"{acc[c]:.2f}" if c in acc.index else "—"
        levels_all = sorted({int(c) for v, o in accs.values() for c in [*v.index, *o.index]})
        print("\n| run | " + " | ".join(str(c) for c in levels_all) + " |")
        print("|---|" + "---:|" * len(levels_all))
        for name, (v, o) in accs.items():
            print(f"| {name} | " + " | ".join(f"{cells(v, c)} / {cells(o, c)}" for c in levels_all) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
