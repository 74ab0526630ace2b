"""Temporary ``ponder demo``: the task catalogue and one example of every task.

A placeholder until the trainer's demo (train → eval → analyse → report) replaces this file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show the task catalogue and one example of every task")
    p.add_argument("--out", default=None, help="also write the examples to DIR/tasks.jsonl")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponder.tasks import get, names
    from ponder.tasks.catalog import render_text
    from ponder.tasks.cli import cmd_list

    cmd_list(args)
    examples = []
    for name in names():
        ex = get(name).example("valid", 0)
        examples.append(ex)
        print(render_text(ex), end="\n\n")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(e.to_json()) + "\n" for e in examples)
        os.replace(tmp, out / "tasks.jsonl")
        print(f"wrote {out / 'tasks.jsonl'}")
    return 0
