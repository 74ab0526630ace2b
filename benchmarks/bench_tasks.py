"""Generation speed: examples/second per registered task (default config, train split, one core).

    .venv/bin/python benchmarks/bench_tasks.py [--seconds S] [--json] [--target 5000]

Each task generates consecutive train examples (``Task.example``: sampling, the split hash
and any rejection included) for about ``--seconds`` seconds of wall time after a warm-up.
Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import ponder.tasks as T


def measure(name: str, seconds: float) -> dict:
    task = T.get(name)
    for i in range(50):  # warm-up
        task.example("train", i)
    count, tokens, start = 0, 0, time.perf_counter()
    index = 10_000
    while True:
        for _ in range(100):
            tokens += len(task.example("train", index).input)
            index += 1
        count += 100
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"task": name, "examples": count, "seconds": round(elapsed, 3),
            "examples_per_s": round(count / elapsed, 1), "mean_tokens": round(tokens / count, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per task (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--target", type=float, default=5000.0, help="examples/s to flag below")
    parser.add_argument("tasks", nargs="*", help="tasks to measure (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(n, args.seconds) for n in (args.tasks or T.names())]
    for r in rows:
        r["meets_target"] = r["examples_per_s"] >= args.target
    if args.json:
        print(json.dumps({"target_examples_per_s": args.target, "results": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"examples/s per task (train, 1 core; target {args.target:,.0f})")
    for col in ("task", "examples/s", "mean tokens", "≥ target"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in rows:
        table.add_row(r["task"], f"{r['examples_per_s']:,.0f}", f"{r['mean_tokens']}",
                      "yes" if r["meets_target"] else "NO")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
