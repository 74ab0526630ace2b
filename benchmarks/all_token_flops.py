"""FLOPs per token over every input token, not only the scored ones, relative to the first run.

    .venv/bin/python benchmarks/all_token_flops.py RUN_DIR [RUN_DIR ...] [--split valid] [--n 500]

``ponder eval`` records (and ``benchmarks/routing_table.py``) hold the scored tokens only.
On a task that scores a few positions (listops: the ``]`` tokens), a router's FLOPs on
them depend on what it learned to route, while its capacity fixes the FLOPs over all
tokens; this prints both on examples ``0..n-1`` of the split (the same examples as
``ponder eval --n``), one markdown row per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ponder.eval.evaluate import load_run
from ponder.tasks import IGNORE_INDEX, collate
from ponder.train.segments import forward_segments


@torch.no_grad()
def mean_flops(run_dir: Path, split: str, n: int, batch_size: int = 256) -> tuple[float, float]:
    """(mean FLOPs per real input token, mean FLOPs per scored token) on examples 0..n-1."""
    run = load_run(run_dir)
    torch.set_num_threads(run.cfg.run.threads)
    total = scored_total = 0.0
    count = scored_count = 0
    for start in range(0, n, batch_size):
        examples = [run.task.example(split, i) for i in range(start, min(n, start + batch_size))]
        batch = collate(examples, run.vocab)
        out = forward_segments(run.model, batch.tokens, batch.mask, segments=run.cfg.supervision.segments)
        if out.flops is None:
            raise SystemExit(f"{run_dir}: the model does not count FLOPs")
        flops = out.flops.double()                       # [B, L]
        scored = batch.targets != IGNORE_INDEX           # [B, L], inside the mask
        total += float(flops[batch.mask].sum())
        count += int(batch.mask.sum())
        scored_total += float(flops[scored].sum())
        scored_count += int(scored.sum())
    return total / count, scored_total / scored_count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    print("| run | FLOPs / input token vs first | FLOPs / scored token vs first | MFLOPs / input token |")
    print("|---|---:|---:|---:|")
    base = None
    for run in args.runs:
        every, scored = mean_flops(run, args.split, args.n)
        base = base or (every, scored)
        print(f"| {run.name} | {every / base[0]:.3f} | {scored / base[1]:.3f} | {every / 1e6:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
