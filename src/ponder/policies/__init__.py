"""Compute-allocation policies: who halts when.

>>> import ponder.policies
>>> ponder.policies.names()                          # every registered policy
>>> policy = ponder.policies.get("pondernet", beta=0.01)

Every module of this package except the infrastructure below is imported here, so adding a
policy is one new file whose class is decorated with ``@register`` (see ``base.py``).
"""

import importlib
import pkgutil

from ponder.policies.base import Decision, Halting, NoKnobs, Policy, View, knob
from ponder.policies.registry import get, names, policy_class, register, unregister

_INFRASTRUCTURE = {"base", "registry", "halting", "cli", "scripted"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name not in _INFRASTRUCTURE and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Decision", "Halting", "NoKnobs", "Policy", "View", "knob", "get", "names",
           "policy_class", "register", "unregister"]
