"""Print the markdown tables of docs/results/experts.md from the runs of experts_results.sh.

    python benchmarks/experts_table.py OUT_DIR

Runs are the directories ``OUT_DIR/<task>-<row>`` with an ``eval/`` (accuracy from
``eval/<split>.json``; FLOPs per token: the mean counted forward FLOPs of the valid records;
load per expert and I(expert; complexity): ``analysis.json``'s ``experts`` section, the
first-choice expert of the last routed FFN a token entered, valid split). Training-side
routing statistics (``stat_route/<ffn kind>.*``: dropped share, per-token routing entropy in
nats, router margin top-1 − top-2 probability) are averaged over the last 10 logged training
steps (the last 200 steps at log_every 20).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

ROWS = ["dense", "switch", "topk", "sigma_moe", "fff", "sut", "moeut"]


def runs(out: Path) -> list[Path]:
    """The evaluated runs, by task then in ROWS order."""
    found = [p for p in out.iterdir() if (p / "eval" / "valid.json").is_file()]
    key = lambda p: (p.name.split("-", 1)[0], ROWS.index(p.name.split("-", 1)[1])  # noqa: E731
                     if p.name.split("-", 1)[1] in ROWS else 99)
    return sorted(found, key=key)


def train_rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == "train"]


def late_mean(rows: list[dict[str, Any]], key: str, last: int = 10) -> Optional[float]:
    vals = [r[key] for r in rows[-last:] if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def fmt(v: Optional[float], spec: str) -> str:
    return "—" if v is None else format(v, spec)


def describe(run: Path) -> dict[str, Any]:
    task, row = run.name.split("-", 1)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ffn, attn = cfg["model"]["ffn"]["kind"], cfg["model"]["attention"]["kind"]
    acc = {s: json.loads((run / "eval" / f"{s}.json").read_text())["token_acc"] for s in ("valid", "ood")}
    flops = pd.read_parquet(run / "eval" / "valid.parquet", columns=["flops"])["flops"].mean()
    tr = train_rows(run)
    analysis = json.loads((run / "analysis.json").read_text())
    ex = analysis.get("experts", {})
    steps = tr[-1]["step"] if tr else None
    knobs = cfg["model"]["ffn"].get("knobs") or {}
    n_experts = 2 ** knobs.get("depth", 3) if ffn == "fff" else knobs.get("n_experts", 8)
    return {"task": task, "row": row, "ffn": ffn, "n_experts": n_experts, "attention": attn, "steps": steps, "acc": acc,
            "flops": flops, "experts": ex,
            "dropped": late_mean(tr, f"stat_route/{ffn}.dropped"),
            "entropy": late_mean(tr, f"stat_route/{ffn}.entropy"),
            "margin": late_mean(tr, f"stat_route/{ffn}.margin"),
            "leaf_entropy": late_mean(tr, "stat_route/fff_leaf_entropy"),
            "policy": cfg["policy"]["name"], "mean_steps": json.loads(
                (run / "eval" / "valid.json").read_text()).get("mean_steps")}


def main(out: Path) -> None:
    rows = [describe(r) for r in runs(out)]
    print("| task | row | FFN · attention | steps | valid acc | ood acc | FLOPs / token (valid) | "
          "mean depth (valid) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for d in rows:
        print(f"| {d['task']} | {d['row']} | {d['ffn']} · {d['attention']} | {d['steps']} | "
              f"{d['acc']['valid']:.3f} | {d['acc']['ood']:.3f} | {d['flops'] / 1e6:.3f} M | "
              f"{fmt(d['mean_steps'], '.2f')} |")
    print()
    print("| task | row | load per expert (valid, first choice; fff: per leaf) | dropped (train) | routing entropy, nats "
          "(train) | margin (train) | I(expert; complexity) valid, bits [shuffled] | normalised | "
          "I ood, bits [shuffled] |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for d in rows:
        v, o = d["experts"].get("valid"), d["experts"].get("ood")
        if v is None:
            continue
        # every expert of the layer, the never-chosen ones as 0
        shares = {int(k): x for k, x in v["load"].items()}
        load = " / ".join(f"{shares.get(e, 0.0):.2f}" for e in range(d["n_experts"]))
        ent = fmt(d["entropy"], ".2f") if d["ffn"] != "fff" else f"{fmt(d['leaf_entropy'], '.4f')} (leaf)"
        print(f"| {d['task']} | {d['row']} | {load} | {fmt(d['dropped'], '.3f')} | {ent} | "
              f"{fmt(d['margin'], '.2f')} | {v['mutual_information_bits']:.3f} [{v['shuffled_bits']:.3f}] | "
              f"{v['normalised']:.2f} | "
              + (f"{o['mutual_information_bits']:.3f} [{o['shuffled_bits']:.3f}]" if o else "—") + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
