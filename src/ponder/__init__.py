"""ponder: a workbench for adaptive computation (halting, early exit, routing, elastic inputs)."""

__version__ = "0.1.0"
