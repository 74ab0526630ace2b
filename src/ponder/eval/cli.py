"""``ponder eval RUN_DIR [--split S ...] [--n N]``: per-token records + a summary per split."""

from __future__ import annotations

import argparse

from ponder.eval.evaluate import DEFAULT_N, DEFAULT_SPLITS


def run(args: argparse.Namespace) -> int:
    from ponder.eval.evaluate import evaluate_run

    evaluate_run(args.run_dir, args.split or DEFAULT_SPLITS, n=args.n, batch_size=args.batch_size,
                 log=print)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run's last checkpoint",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", action="append", metavar="S",
                   help=f"split to evaluate (repeatable; default: {' '.join(DEFAULT_SPLITS)})")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="examples per split")
    p.add_argument("--batch-size", type=int, default=None, help="inference batch size")
    p.set_defaults(func=run)
