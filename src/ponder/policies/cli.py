"""``ponder policies list``: every registered policy, its timing, causality, stack kinds and knobs."""

from __future__ import annotations

import argparse

from ponder.policies.registry import names, policy_class
from ponder.tasks.base import describe_knobs


def register(sub: argparse._SubParsersAction) -> None:
    policies = sub.add_parser("policies", help="list the compute-allocation policies")
    psub = policies.add_subparsers(dest="policies_command", metavar="ACTION",
                                   parser_class=type(policies))
    policies.set_defaults(func=lambda args: (policies.print_help(), 2)[1])
    lst = psub.add_parser("list", help="every registered policy with its knobs and paper")
    lst.set_defaults(func=cmd_list)


def rows() -> list[tuple[str, str, str, str, str, str, str]]:
    """(name, online/early, causal, kinds, objective, knobs with defaults, paper) per policy."""
    out = []
    for name in names():
        cls = policy_class(name)
        out.append((name, "online" if cls.online else "early", "yes" if cls.causal else "no",
                    ", ".join(cls.kinds), cls.objective, describe_knobs(cls.Knobs), cls.paper))
    return out


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="ponder policies", show_lines=True)
    for column in ("policy", "decides", "causal", "stack kinds", "objective", "knobs (default [range])", "paper"):
        table.add_column(escape(column), style="bold" if column == "policy" else None)
    for row in rows():
        table.add_row(*(escape(cell) for cell in row))
    Console(width=max(140, Console().width)).print(table)
    return 0
