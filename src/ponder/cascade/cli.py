"""``ponder cascade RUN_DIR RUN_DIR [...] --rule R [--target-risk δ | --budget C] --out DIR``."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ponder.cascade.run import cascade, write_outputs

    summary, records = cascade(args.run_dirs, rule=args.rule, split=args.split, n=args.n,
                               target_risk=args.target_risk, budget=args.budget,
                               epsilon=args.epsilon, p_value=args.p_value,
                               confidence=args.confidence, seed=args.seed, threads=args.threads)
    write_outputs(args.out, summary, records)
    t = summary["test"]
    print(f"{args.rule}: test accuracy {t['accuracy']:.4f} at {t['flops_rel_largest']:.3f}x the "
          f"largest run's FLOPs; answered by " +
          ", ".join(f"{k} {v:.2f}" for k, v in t["answered_by"].items()) + f" → {args.out}")
    return 0


def register(subparsers) -> None:
    from ponder.cascade.calibrate import P_VALUES
    from ponder.cascade.outcomes import CONFIDENCES
    from ponder.cascade.rules import RULES

    p = subparsers.add_parser("cascade", help="cascade / route examples across trained runs",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs of one task, cheapest first")
    p.add_argument("--rule", required=True, choices=sorted(RULES))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-risk", type=float, default=None, metavar="DELTA",
                   help="Learn-then-Test: error within DELTA of the largest run's (default 0.05)")
    g.add_argument("--budget", type=float, default=None, metavar="C",
                   help="mean FLOPs per example <= C x the largest run's")
    p.add_argument("--epsilon", type=float, default=0.1, help="LTT failure probability")
    p.add_argument("--p-value", choices=sorted(P_VALUES), default="binomial")
    p.add_argument("--confidence", choices=CONFIDENCES, default="max_softmax", help="idk's measure")
    p.add_argument("--split", default="valid")
    p.add_argument("--n", type=int, default=1000, help="examples (split into fit/calibrate/test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=run)
