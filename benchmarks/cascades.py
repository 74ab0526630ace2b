"""The measured tables of docs/results/cascades.md: every cascade rule on two tasks.

    .venv/bin/python benchmarks/cascades.py --out runs/cascades [--n 2000] [--jobs 2]

Per task, two fixed-depth runs of one config that differ only in depth (budgets in
optimiser steps, seed 0, one thread each: the same runs on any machine):

- ``parity`` (preset ``adatape``, ``configs/parity_transformer.yaml``): *small* = 1 layer
  for 400 steps, *large* = 4 layers until valid accuracy 0.995 or 1,500 steps;
- ``list_rank`` (``configs/demo_fixed.yaml``): *small* = 3 core steps for 1,200 steps,
  *large* = 8 core steps until 0.995 or 2,000 steps.

Then ``ponder cascade small large --rule R`` for every rule (LTT at the default target risk
δ = 0.05, ε = 0.1) on ``--n`` valid examples (40 % fit / 30 % calibrate / 30 % test), and a
Markdown table of the test part: each rule's accuracy and FLOPs against each model alone,
and the least FLOPs at which the rule's cost–quality curve reaches the large model's
accuracy. Runs that already finished are reused (``ponder train`` resumes a complete run as
done). Not a test: the figures depend on the training runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PONDER = [sys.executable, "-m", "ponder"]
COMMON = ["run.threads=1", "run.seed=0", "run.time_budget_s=100000"]  # steps decide, not time
RUNS = {  # task → {name: (config, overrides)}
    "parity": {
        "small": ("parity_transformer.yaml", ["model.max_steps=1", "run.steps=400",
                                              "schedule.total=400", "run.stop_at_acc=1.0"]),
        "large": ("parity_transformer.yaml", ["model.max_steps=4", "run.steps=1500",
                                              "schedule.total=1500", "run.stop_at_acc=0.995"]),
    },
    "list_rank": {
        "small": ("demo_fixed.yaml", ["model.max_steps=3", "run.steps=1200",
                                      "schedule.total=1200", "run.stop_at_acc=1.0"]),
        "large": ("demo_fixed.yaml", ["model.max_steps=8", "run.steps=2000",
                                      "schedule.total=2000", "run.stop_at_acc=0.995"]),
    },
}
RULES = ("idk", "frugal", "router")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd[2:] if cmd[:2] == PONDER[:2] else cmd), flush=True)
    subprocess.run(cmd, check=True)


def train_all(out: Path, jobs: int) -> None:
    from ponder.train import configs_dir

    def chain(task: str) -> None:  # small then large: two tasks run side by side
        for name, (config, overrides) in RUNS[task].items():
            _run([*PONDER, "train", str(configs_dir() / config), *COMMON, *overrides,
                  "--out", str(out / task / name), "--progress", "none"])

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(chain, RUNS))


def cascade_all(out: Path, n: int) -> dict[str, dict[str, dict]]:
    summaries: dict[str, dict[str, dict]] = {}
    for task in RUNS:
        runs = [str(out / task / name) for name in RUNS[task]]
        for rule in RULES:
            dest = out / task / f"cascade_{rule}"
            _run([*PONDER, "cascade", *runs, "--rule", rule, "--n", str(n), "--out", str(dest)])
            summaries.setdefault(task, {})[rule] = json.loads((dest / "summary.json").read_text())
    return summaries


def table(task: str, by_rule: dict[str, dict]) -> str:
    any_summary = next(iter(by_rule.values()))
    singles = any_summary["single"]
    largest = any_summary["runs"][-1]
    big = singles[largest]
    lines = [f"**{task}** (test part: {any_summary['parts']['test']} examples; FLOPs per example "
             f"relative to the large model's {big['flops']:.3g})", "",
             "| who answers | accuracy | FLOPs (× large) | wall time (× large) | answered by small | "
             "FLOPs to match the large model's accuracy (× large) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, p in singles.items():
        lines.append(f"| {name} alone | {p['accuracy']:.3f} | {p['flops_rel_largest']:.3f} | "
                     f"{p['wall_us'] / big['wall_us']:.3f} | "
                     f"{'1.00' if name != largest else '0.00'} | — |")
    for rule, s in by_rule.items():
        t = s["test"]
        match = s["flops_to_match_largest"]
        match_txt = f"{match / big['flops']:.3f}" if match is not None else "never"
        small = t["answered_by"][s["runs"][0]]
        lines.append(f"| `{rule}` (LTT δ {s['calibration'].get('delta')}) | {t['accuracy']:.3f} | "
                     f"{t['flops_rel_largest']:.3f} | {t['wall_us'] / big['wall_us']:.3f} | "
                     f"{small:.2f} | {match_txt} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--table-only", action="store_true",
                        help="print the tables of an earlier run's OUT/cascades.json")
    args = parser.parse_args(argv)
    if args.table_only:
        summaries = json.loads((args.out / "cascades.json").read_text())
    else:
        train_all(args.out, args.jobs)
        summaries = cascade_all(args.out, args.n)
        (args.out / "cascades.json").write_text(json.dumps(summaries, indent=1))
    for task, by_rule in summaries.items():
        print("\n" + table(task, by_rule) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
