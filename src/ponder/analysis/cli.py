"""``ponder analyze RUN_DIR`` and ``ponder report RUN_DIR [RUN_DIR ...] [--out FILE]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _analyze(args: argparse.Namespace) -> int:
    from ponder.analysis.analyze import analyze_run

    result = analyze_run(args.run_dir, seed=args.seed)
    run_dir = Path(args.run_dir)
    for split in result["run"]["splits"]:
        a = result["alignment"][split]
        g = result["generalisation"][split]
        c = result["compute"][split]
        rho = "undefined" if a["rho"] is None else f"{a['rho']:.3f}"
        saved = "—" if c["steps_saved"] is None else f"{100 * c['steps_saved']:.1f}%"
        print(f"{split}: accuracy {g['accuracy']:.3f}, mean steps {c['mean_steps']:.2f}"
              f"/{c['max_steps']}, rho(steps, complexity) {rho}, token-steps saved {saved}")
    for knob, sw in (result.get("size_sweep") or {}).items():
        print(f"size sweep {sw['spec']} (training range {sw['train_range']}):")
        for r in sw["rows"]:
            rho = "undefined" if r["rho"] is None else f"{r['rho']:.3f}"
            mark = " (train range)" if r["in_train_range"] else ""
            acc = "—" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
            steps = "—" if r["mean_steps"] is None else f"{r['mean_steps']:.2f}"
            print(f"  {knob}={r['size']}: accuracy {acc}, mean steps {steps}, rho {rho}, "
                  f"n {r['n']}{mark}")
    print(f"wrote {run_dir / 'analysis.json'} and {run_dir / 'figures'}/")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ponder.analysis.report import write_report

    out = args.out or (Path(args.run_dirs[0]) / "report.html" if len(args.run_dirs) == 1
                       else Path("report.html"))
    path = write_report(args.run_dirs, out, seed=args.seed)
    print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    analyze = subparsers.add_parser(
        "analyze", help="alignment, generalisation, decision timing and compute of a run",
        description="Read RUN_DIR/eval/*.parquet; write RUN_DIR/analysis.json and RUN_DIR/figures/.")
    analyze.add_argument("run_dir", metavar="RUN_DIR")
    analyze.add_argument("--seed", type=int, default=0, help="bootstrap / subsampling seed")
    analyze.set_defaults(func=_analyze)

    report = subparsers.add_parser(
        "report", help="one self-contained HTML page comparing runs",
        description="Analyse each RUN_DIR (if needed) and write one HTML report.")
    report.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    report.add_argument("--out", type=Path, default=None,
                        help="output file (default: RUN_DIR/report.html for one run, ./report.html otherwise)")
    report.add_argument("--seed", type=int, default=0)
    report.set_defaults(func=_report)
