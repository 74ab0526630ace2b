"""A tiny run trained (and evaluated) once per test module."""

from __future__ import annotations

from pathlib import Path

from ponder.cli import main
from ponder.train.config import load_config
from ponder.train.trainer import train


def trained_run(tmp_path_factory, name: str, overrides: list[str], eval_args: list[str] | None = None) -> Path:
    """Train ``overrides`` into a fresh directory; then ``ponder eval RUN *eval_args`` unless
    ``eval_args`` is None. → the run directory."""
    out = tmp_path_factory.mktemp(name) / "run"
    train(load_config(None, overrides), out, progress="none")
    if eval_args is not None:
        assert main(["eval", str(out), *eval_args]) == 0
    return out
