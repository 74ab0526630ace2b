"""Evaluation: per-token records of a trained run on each split (``ponder eval``).

    ponder.eval.evaluate_run("runs/x")      # → runs/x/eval/<split>.parquet + summary.json

These are the names apps (``ponder.apps``) may use; the modules below hold the rest.
"""

from ponder._exports import lazy_exports

_HOMES = {"evaluate_run": "ponder.eval.evaluate"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
