"""``ponder eval RUN_DIR [--split S ...] [--n N] [--sweep KNOB=LO..HI[:STEP] ...]``: per-token
records + a summary per split (or, with ``--sweep``, per size of a size knob)."""

from __future__ import annotations

import argparse

from ponder.eval.evaluate import DEFAULT_N, DEFAULT_SPLITS


def run(args: argparse.Namespace) -> int:
    from ponder.errors import ConfigError
    from ponder.eval.evaluate import evaluate_run
    from ponder.tasks import SPLITS

    if not args.sweep:
        evaluate_run(args.run_dir, args.split or DEFAULT_SPLITS, n=args.n,
                     batch_size=args.batch_size, log=print)
        return 0
    from ponder.eval.sweep import sweep_run

    for split in args.split or ():  # checked before the sweep writes anything
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    sweep_run(args.run_dir, args.sweep, n=args.n, batch_size=args.batch_size, log=print)
    if args.split:
        evaluate_run(args.run_dir, args.split, n=args.n, batch_size=args.batch_size, log=print)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run's last checkpoint",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", action="append", metavar="S",
                   help=f"split to evaluate (repeatable; default: {' '.join(DEFAULT_SPLITS)}, "
                        "none with --sweep)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="examples per split (per size with --sweep)")
    p.add_argument("--batch-size", type=int, default=None, help="inference batch size")
    p.add_argument("--sweep", action="append", metavar="KNOB=LO..HI[:STEP]",
                   help="size sweep: score the run at each size of a size knob of its task "
                        "(e.g. m=4..40 for list_rank; repeatable) → RUN_DIR/eval/sweep/")
    p.set_defaults(func=run)
