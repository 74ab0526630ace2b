"""Apps import only the public library; the library never imports an app.

"Public" = a name a package lists in ``__all__`` (or ``ponder.errors``, the error types every
layer shares). The check reads the apps' source, so an app cannot reach into, say,
``ponder.train.trainer`` without this test naming the file and the line.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ponder"
APPS = sorted((SRC / "apps").glob("*.py"))
PUBLIC_MODULES = {"ponder.errors"}  # shared error types: the whole module is public


def _violations(path: Path) -> list[str]:
    """Every import of a non-public ponder name in ``path``, as 'file:line: what'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    module_aliases: dict[str, str] = {}  # local name → ponder package imported as a module
    where = lambda node: f"{path.name}:{node.lineno}"  # noqa: E731

    def package_ok(dotted: str) -> bool:
        parts = dotted.split(".")
        return dotted in PUBLIC_MODULES or dotted.startswith("ponder.apps") or len(parts) == 2

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ponder"):
            if not package_ok(node.module):
                found.append(f"{where(node)}: from {node.module} import ... (an inner module)")
                continue
            if node.module in PUBLIC_MODULES or node.module.startswith("ponder.apps"):
                continue
            exported = set(getattr(importlib.import_module(node.module), "__all__", ()))
            found += [f"{where(node)}: {node.module}.{a.name} is not in its __all__"
                      for a in node.names if a.name not in exported]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("ponder"):
                    continue
                if not package_ok(alias.name):
                    found.append(f"{where(node)}: import {alias.name} (an inner module)")
                elif alias.name not in PUBLIC_MODULES and not alias.name.startswith("ponder.apps"):
                    module_aliases[alias.asname or alias.name] = alias.name
    # attribute use of an imported package: ``ponder.tasks.get`` / ``analysis.write_report``
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = ast.unparse(node.value)
            if base in module_aliases:
                package = module_aliases[base]
                if node.attr not in set(importlib.import_module(package).__all__):
                    found.append(f"{where(node)}: {package}.{node.attr} is not in its __all__")
    return found


def test_there_are_apps():
    assert {p.stem for p in APPS} >= {"demo", "reproduce", "bench", "screenshot"}


@pytest.mark.parametrize("path", APPS, ids=lambda p: p.name)
def test_app_imports_only_public_names(path):
    assert _violations(path) == []


def test_the_check_catches_an_inner_import(tmp_path):
    bad = tmp_path / "bad_app.py"
    bad.write_text("from ponder.train.trainer import train\n"
                   "from ponder.train import _HOMES\n"
                   "import ponder.tasks\n"
                   "ponder.tasks.families\n")
    assert [v.split(": ", 1)[1] for v in _violations(bad)] == [
        "from ponder.train.trainer import ... (an inner module)",
        "ponder.train._HOMES is not in its __all__",
        "ponder.tasks.families is not in its __all__",
    ]


def test_every_exported_name_resolves():
    for package in ("ponder.train", "ponder.eval", "ponder.analysis", "ponder.tasks",
                    "ponder.policies", "ponder.models", "ponder.benchmarking"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"


def test_the_library_never_imports_an_app():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "apps" or path.name == "cli.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(SRC)}:{node.lineno}" for n in names
                          if n.startswith("ponder.apps")]
    assert offenders == []
