"""``ponder tasks list`` and ``ponder tasks sample TASK [...] [knob=value ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ponder.errors import ConfigError
from ponder.tasks.base import SPLITS, parse_knob
from ponder.tasks.catalog import knob_rows, render_text
from ponder.tasks.registry import get, names, task_class


def register(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("tasks", help="list the task catalogue or sample examples")
    tsub = tasks.add_subparsers(dest="tasks_command", metavar="ACTION",
                                parser_class=type(tasks))
    tasks.set_defaults(func=lambda args: (tasks.print_help(), 2)[1])

    lst = tsub.add_parser("list", help="every registered task, its knobs and complexity")
    lst.set_defaults(func=cmd_list)

    smp = tsub.add_parser("sample", help="print examples of a task (JSONL or text)")
    smp.add_argument("task", metavar="TASK")
    # Knobs and options may be mixed in any order after TASK (argparse's parse_args cannot
    # interleave them), so the rest is parsed again by _rest_parser in cmd_sample.
    smp.add_argument("rest", nargs=argparse.REMAINDER, metavar="[knob=value | option] ...")
    _sample_options(smp)
    smp.set_defaults(func=cmd_sample)


def _sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", help=f"one of {', '.join(SPLITS)} (default train)")
    p.add_argument("--n", type=int, default=5, help="number of examples (default 5)")
    p.add_argument("--seed", type=int, default=0, help="index of the first example (default 0)")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "text"))
    p.add_argument("--preset", default=None, help="a named preset of the task's knobs")


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message)


def _rest_parser() -> argparse.ArgumentParser:
    p = _RaisingParser(prog="ponder tasks sample", add_help=False)
    p.add_argument("knobs", nargs="*")
    _sample_options(p)
    return p


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ponder tasks", show_lines=True)
    table.add_column("task", style="bold")
    table.add_column("causal")
    table.add_column("knobs (defaults)")
    table.add_column("presets")
    table.add_column("complexity")
    for name in names():
        cls = task_class(name)
        knobs = " ".join(f"{k}={d}" for k, d, _, _ in knob_rows(cls))
        table.add_row(name, "yes" if cls.causal else "no", knobs, ", ".join(cls.presets),
                      cls.complexity_doc)
    Console(width=max(120, Console().width)).print(table)
    return 0


def parse_overrides(task: str, items: list[str]) -> dict[str, Any]:
    """``["n_max=12", ...]`` → typed knob values (ConfigError on malformed or unknown knobs)."""
    cls = task_class(task)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected knob=value, got {item!r}")
        values[key] = parse_knob(cls.Config, key, text)
    return values


def cmd_sample(args: argparse.Namespace) -> int:
    args = _rest_parser().parse_intermixed_args(args.rest, namespace=argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k != "rest"}))
    if args.split not in SPLITS:
        raise ConfigError(f"unknown split {args.split!r}; choose from {', '.join(SPLITS)}")
    if args.n < 0:
        raise ConfigError(f"--n must be >= 0, got {args.n}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    task = get(args.task, preset=args.preset, **parse_overrides(args.task, args.knobs))
    out = sys.stdout
    for k in range(args.n):
        ex = task.example(args.split, args.seed + k)
        if args.format == "jsonl":
            out.write(json.dumps(ex.to_json()) + "\n")
        else:
            out.write(render_text(ex) + "\n\n")
    out.flush()
    return 0
