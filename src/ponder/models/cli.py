"""``ponder ffn list`` / ``ponder attention list`` / ``ponder router list``: the block registries."""

from __future__ import annotations

import argparse

from ponder.models.kinds import ATTENTIONS, FFNS, ROUTERS, Registry

REGISTRIES = (("ffn", FFNS, "FFN kinds (model.ffn.kind)"),
              ("attention", ATTENTIONS, "attention kinds (model.attention.kind)"),
              ("router", ROUTERS, "block routers (model.router.kind; none = every token enters)"))


def register(sub: argparse._SubParsersAction) -> None:
    import ponder.models  # noqa: F401  (registers every kind)

    for command, registry, title in REGISTRIES:
        parser = sub.add_parser(command, help=f"list the {title}")
        psub = parser.add_subparsers(dest=f"{command}_command", metavar="ACTION",
                                     parser_class=type(parser))
        parser.set_defaults(func=lambda args, p=parser: (p.print_help(), 2)[1])
        lst = psub.add_parser("list", help=f"every registered {command} kind with its knobs")
        lst.set_defaults(func=lambda args, r=registry, t=title: cmd_list(r, t))


def cmd_list(registry: Registry, title: str) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"ponder {title}", show_lines=True)
    for column in ("kind", "causal", "knobs (default [range])", "paper"):
        table.add_column(escape(column), style="bold" if column == "kind" else None)
    rows = registry.rows()
    if registry is ROUTERS:
        rows = [("none", "yes", "-", "every token enters every block")] + rows
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    Console(width=max(120, Console().width)).print(table)
    return 0
