"""Lazy public names for a package's ``__init__``.

A package lists its public names and the module each lives in; the name is imported on first
use. That keeps ``import ponder.train`` cheap (the CLI imports every package to build its
parser) and free of import cycles, while ``from ponder.train import train`` still works.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` resolving each name in ``homes``.

    ``homes`` maps a public name to the dotted module that defines it.
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    return __getattr__
