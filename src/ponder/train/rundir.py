"""The run directory: ``config.yaml`` written at start, checked on every later call.

A second ``ponder train`` with the same ``--out`` resumes; a different config for an
existing run is refused (:class:`~ponder.errors.ConfigError`) before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ponder.errors import CheckpointError, ConfigError, PonderError
from ponder.train.checkpoint import CKPT_DIR, atomic_write_text
from ponder.train.config import TrainConfig, from_dict, to_dict, to_yaml

CONFIG_FILE = "config.yaml"


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                return where
            found = _first_difference(a[key], b[key], where)
            if found:
                return found
        return None
    return None if a == b else prefix or "<root>"


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<absent>"
        d = d[part]
    return d


def read_run_config(run_dir: Path) -> TrainConfig:
    """The config a run was started with (``RUN_DIR/config.yaml``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    if not path.exists():
        raise CheckpointError(f"{str(run_dir)!r} is not a ponder run ({CONFIG_FILE} is missing)")
    try:
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError
        return from_dict(data)
    except (yaml.YAMLError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{str(path)!r} is unreadable or not a run config") from None
    except PonderError as exc:
        raise CheckpointError(f"{str(path)!r} is not a valid run config: {exc}") from None


def check_run_dir(run_dir: Path, cfg: TrainConfig) -> bool:
    """Validate ``run_dir`` for ``cfg`` without writing. Returns True if it already holds this run."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} exists and is not a directory")
    if not run_dir.exists():
        return False
    if not (run_dir / CONFIG_FILE).exists():
        if any(run_dir.iterdir()):
            raise ConfigError(f"--out {str(run_dir)!r} is a non-empty directory that is not a "
                              f"ponder run; choose another --out")
        if (run_dir / CKPT_DIR).exists():  # pragma: no cover - covered by the check above
            raise ConfigError(f"{str(run_dir)!r} has checkpoints but no {CONFIG_FILE}")
        return False
    saved = to_dict(read_run_config(run_dir))
    wanted = to_dict(cfg)
    diff = _first_difference(saved, wanted)
    if diff is not None:
        raise ConfigError(f"{str(run_dir)!r} holds a run with a different config "
                          f"({diff}: {_get(saved, diff)!r} there, {_get(wanted, diff)!r} now); "
                          f"use another --out or the same config to resume")
    return True


def write_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / CONFIG_FILE, to_yaml(cfg))
