"""``ponder train [CONFIG.yaml] [key=value ...] --out RUN_DIR``.

A second call with the same ``--out`` resumes from the last checkpoint (with no CONFIG and
no overrides it reuses the run's saved ``config.yaml``). Works under ``torchrun``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ponder.errors import ConfigError
from ponder.train.progress import MODES


def _split_items(items: list[str]) -> tuple[str | None, list[str]]:
    config, overrides = None, []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            config = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: the config file comes first, "
                              f"then key=value overrides")
    return config, overrides


def run(args: argparse.Namespace) -> int:
    from ponder.train.config import load_config
    from ponder.train.rundir import CONFIG_FILE, read_run_config
    from ponder.train.trainer import DivergedError, train

    config, overrides = _split_items(args.items)
    out = Path(args.out)
    if config is None and not overrides and (out / CONFIG_FILE).exists():
        cfg = read_run_config(out)  # plain resume: the run's own config
    else:
        cfg = load_config(config, overrides)
    try:
        result = train(cfg, out, progress=args.progress)
    except DivergedError as exc:
        sys.stderr.write(f"ponder: training diverged: {exc}\n")
        return 3
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        v = result.valid
        if result.reason == "already_finished":
            print(f"{out}: already finished at step {result.step}; nothing to do")
        else:
            print(f"{out}: stopped at step {result.step} ({result.reason}) after "
                  f"{result.train_s:.1f}s; valid token acc {v.get('token_acc', float('nan')):.4f}, "
                  f"seq acc {v.get('seq_acc', float('nan')):.4f}, mean steps "
                  f"{v.get('mean_steps', float('nan')):.2f}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train (or resume) a run",
                              description=__doc__.splitlines()[0])
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value",
                   help="an optional YAML config, then key=value overrides (e.g. run.steps=500)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory")
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="rich bar, plain lines, or none (default: rich on a terminal)")
    p.set_defaults(func=run)
