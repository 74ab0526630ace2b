"""Print the markdown table of docs/results/experts.md from the runs of experts_results.sh.

    python benchmarks/experts_table.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def last_train_stats(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    return train[-1] if train else {}


def main(out: Path) -> None:
    print("| task | ffn | valid acc | ood acc | FLOPs / token (valid) | dropped (train) | "
          "routing entropy (train) | I(expert; complexity) valid, bits [shuffled] |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in sorted(p for p in out.iterdir() if (p / "eval").is_dir()):
        task, ffn = run.name.split("-", 1)
        acc = {s: json.loads((run / "eval" / f"{s}.json").read_text())["token_acc"] for s in ("valid", "ood")}
        flops = pd.read_parquet(run / "eval" / "valid.parquet", columns=["flops"])["flops"].mean()
        stats = last_train_stats(run)
        dropped = stats.get(f"stat_route/{ffn}.dropped")
        entropy = stats.get(f"stat_route/{ffn}.entropy")
        analysis = json.loads((run / "analysis.json").read_text())
        ex = analysis.get("experts", {}).get("valid")
        mi = f"{ex['mutual_information_bits']:.3f} [{ex['shuffled_bits']:.3f}]" if ex else "—"
        fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
        print(f"| {task} | {ffn} | {acc['valid']:.3f} | {acc['ood']:.3f} | {flops / 1e6:.3f} M | "
              f"{fmt(dropped, '.3f')} | {fmt(entropy, '.2f')} | {mi} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
