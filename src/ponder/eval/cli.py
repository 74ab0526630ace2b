"""``ponder eval RUN_DIR [--split S ...] [--n N] [--depths A:B] [--sweep KNOB=LO..HI]``: per-token records + a summary per split.

``--sweep KNOB=LO..HI[:STEP]`` scores the run at each size of a size knob of its task into
``RUN_DIR/eval/sweep/`` (``ponder.eval.sweep``; the splits only when ``--split`` is given).
``--depths A:B`` (or ``1,2,4``) also evaluates at each fixed loop count (accuracy against
inference depth, beyond the training depth too) into ``RUN_DIR/eval/depth_curve.json``.
``--policy NAME[:knob=value,...]`` evaluates the checkpoint under another, training-free
policy (e.g. a convergence exit on a fixed-depth run) into ``--out DIR`` (default
``RUN_DIR/policies/<spec>``), a directory ``ponder analyze`` reads like a run
(``ponder.eval.evaluate``); a policy with trained parameters is refused (exit 2).
"""

from __future__ import annotations

import argparse

from ponder.eval.evaluate import DEFAULT_N, DEFAULT_SPLITS


def run(args: argparse.Namespace) -> int:
    from ponder.errors import ConfigError
    from ponder.eval.evaluate import depth_curve, evaluate_run, parse_depths, parse_policy
    from ponder.tasks import SPLITS

    depths = parse_depths(args.depths) if args.depths is not None else None  # bad input first
    policy = parse_policy(args.policy) if args.policy is not None else None
    if args.out is not None and policy is None:
        raise ConfigError("--out is only for --policy (a plain eval writes into RUN_DIR/eval)")
    if policy is not None and args.sweep:
        raise ConfigError("--policy does not combine with --sweep")
    splits = args.split or (() if args.sweep else DEFAULT_SPLITS)
    if args.sweep:
        from ponder.eval.sweep import sweep_run

        for split in splits:  # checked before the sweep writes anything
            if split not in SPLITS:
                raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        sweep_run(args.run_dir, args.sweep, n=args.n, batch_size=args.batch_size, log=print)
    if splits:
        evaluate_run(args.run_dir, splits, n=args.n, batch_size=args.batch_size, log=print,
                     policy=policy, out=args.out)
    if depths is not None:
        depth_curve(args.run_dir, depths, args.split or DEFAULT_SPLITS, n=args.n,
                    batch_size=args.batch_size, log=print, policy=policy, out=args.out)
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
    p.add_argument("--depths", metavar="A:B", default=None,
                   help="also evaluate at each fixed loop count A..B (or a comma list) → eval/depth_curve.json")
    p.add_argument("--policy", metavar="NAME[:KNOB=V,...]", default=None,
                   help="evaluate under this training-free policy instead of the run's → --out")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where --policy results go (default RUN_DIR/policies/<spec>)")
    p.set_defaults(func=run)
