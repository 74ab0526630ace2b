"""The `ponder` command line: one sub-command module per package.

Each sub-command lives next to the code it drives (``ponder/tasks/cli.py`` etc.) and
exposes ``register(subparsers)``; the parser it adds sets ``func(args) -> int``.
Every :class:`~ponder.errors.PonderError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from ponder.errors import PonderError

# Modules that add sub-commands; a module that is not there yet is skipped.
COMMAND_MODULES = (
    "ponder.tasks.cli",
    "ponder.policies.cli",
    "ponder.models.cli",
    "ponder.train.cli",
    "ponder.eval.cli",
    "ponder.analysis.cli",
    "ponder.cascade.cli",
    "ponder.generate.cli",
    "ponder.hf.cli",
    "ponder.apps.bench",
    "ponder.apps.demo",
    "ponder.apps.reproduce",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage as a single stderr line with exit status 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def fail(message: str) -> int:
    """Print one error line and return the bad-input exit status."""
    sys.stderr.write(f"ponder: error: {message}\n")
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ponder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet; a broken import inside it still raises
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PonderError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted")
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
