"""Block routers beyond ``none``: one file per mechanism, each registering with
``@ROUTERS.register`` (:mod:`ponder.models.kinds`). Every module of this package is imported
here, so a new router is one new file.

- ``mod``  Mixture-of-Depths: top-k of the sequence by a router score, attention among the
  routed tokens only; a causal rule for inference (auxiliary predictor or router BCE).
- ``skip`` per-token skip/execute gate (FlexiDepth / "learning to skip"): keys/values of
  skipped tokens are kept (their current state).
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
