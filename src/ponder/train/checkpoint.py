"""Atomic checkpoints: weights in safetensors, the rest of the training state beside them.

Layout under ``RUN_DIR/checkpoints/``::

    step-000100.safetensors   model weights
    step-000100.state.pt      optimiser, schedule, RNG states, data position, counters
    latest.json               the manifest: step, file names, sizes and sha256 digests

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``; the manifest is written LAST. A checkpoint is valid only when the manifest
names it and the files' digests match, so a run killed half-way through a save still
resumes from the previous complete checkpoint, and a truncated or corrupted file is
reported (:class:`~ponder.errors.CheckpointError`) instead of being loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ponder.errors import CheckpointError

CKPT_DIR = "checkpoints"
MANIFEST = "latest.json"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); copies are harmless here
    # because loading goes through load_state_dict, which re-ties by name.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


@dataclass
class Checkpoint:
    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    manifest: dict[str, Any]


def save_checkpoint(run_dir: Path, *, step: int, model: torch.nn.Module, state: dict[str, Any],
                    info: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` atomically (files first, manifest last); drop older ones."""
    ckpt_dir = Path(run_dir) / CKPT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:07d}"
    weights = st_save(_state_dict_for_save(model), metadata={"step": str(step)})
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs = {"weights": (f"{stem}.safetensors", weights), "state": (f"{stem}.state.pt", buf.getvalue())}
    for name, data in blobs.values():
        atomic_write_bytes(ckpt_dir / name, data)
    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "files": {key: {"name": name, "bytes": len(data), "sha256": _sha256(data)}
                  for key, (name, data) in blobs.items()},
        **(info or {}),
    }
    atomic_write_text(ckpt_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    keep = {name for name, _ in blobs.values()} | {MANIFEST}
    for old in ckpt_dir.iterdir():  # older checkpoints and leftovers of interrupted saves
        if old.name not in keep and (old.name.startswith("step-") or old.name.startswith(".")):
            try:
                old.unlink()
            except OSError:
                pass
    return ckpt_dir / MANIFEST


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CKPT_DIR / MANIFEST).exists()


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CKPT_DIR / MANIFEST
    if not path.exists():
        raise CheckpointError(f"no checkpoint in {str(run_dir)!r} ({CKPT_DIR}/{MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text())
        step = int(manifest["step"])
        files = manifest["files"]
        for key in ("weights", "state"):
            files[key]["name"], files[key]["sha256"], int(files[key]["bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"corrupt checkpoint manifest {str(path)!r}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {manifest.get('format')!r}, "
                              f"expected {FORMAT_VERSION}")
    manifest["step"] = step
    return manifest


def _read_verified(ckpt_dir: Path, entry: dict[str, Any]) -> bytes:
    path = ckpt_dir / entry["name"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing") from None
    if len(data) != int(entry["bytes"]):
        raise CheckpointError(f"checkpoint file {str(path)!r} is truncated "
                              f"({len(data)} of {entry['bytes']} bytes)")
    if _sha256(data) != entry["sha256"]:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt (sha256 mismatch)")
    return data


def load_checkpoint(run_dir: Path, *, with_state: bool = True) -> Checkpoint:
    """Read and verify the latest checkpoint of ``run_dir`` (weights on the CPU)."""
    manifest = read_manifest(run_dir)
    ckpt_dir = Path(run_dir) / CKPT_DIR
    files = manifest["files"]
    raw = _read_verified(ckpt_dir, files["weights"])
    try:
        weights = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read weights {files['weights']['name']!r}: {exc}") from None
    state: dict[str, Any] = {}
    if with_state:
        raw_state = _read_verified(ckpt_dir, files["state"])
        try:
            # Our own file, verified by digest; it holds RNG states (numpy arrays, tuples).
            state = torch.load(io.BytesIO(raw_state), map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means corrupt
            raise CheckpointError(f"cannot read training state {files['state']['name']!r}: "
                                  f"{type(exc).__name__}") from None
    return Checkpoint(manifest["step"], weights, state, manifest)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load weights into ``model``; a shape/name mismatch is a CheckpointError."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint does not fit the model: {first}") from None
