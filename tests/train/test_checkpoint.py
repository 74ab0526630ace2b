"""Atomic checkpoints: round trip, manifest-last, truncated / corrupt files detected."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

import ponder.train.checkpoint as ck
from ponder.errors import CheckpointError
from ponder.train.schedule import lr_factor


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def test_round_trip_keeps_weights_and_state(tmp_path):
    model = small_model(0)
    state = {"step": 5, "next_batch": 5, "rng": torch.get_rng_state(), "nested": {"a": [1, 2]}}
    ck.save_checkpoint(tmp_path, step=5, model=model, state=state, info={"finished": None})
    got = ck.load_checkpoint(tmp_path)
    assert got.step == 5 and got.manifest["finished"] is None
    for k, v in model.state_dict().items():
        assert torch.equal(got.weights[k], v)
    assert got.state["nested"] == {"a": [1, 2]}
    assert torch.equal(got.state["rng"], state["rng"])
    fresh = small_model(1)
    ck.load_weights(fresh, got.weights)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))


def test_older_checkpoints_are_removed_and_latest_wins(tmp_path):
    ck.save_checkpoint(tmp_path, step=1, model=small_model(0), state={"step": 1})
    ck.save_checkpoint(tmp_path, step=2, model=small_model(1), state={"step": 2})
    names = sorted(p.name for p in (tmp_path / ck.CKPT_DIR).iterdir())
    assert names == ["latest.json", "step-0000002.safetensors", "step-0000002.state.pt"]
    assert ck.load_checkpoint(tmp_path).state["step"] == 2


def test_save_interrupted_before_manifest_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path, step=1, model=small_model(0), state={"step": 1})

    def crash(path, text):
        raise KeyboardInterrupt("killed while writing the manifest")

    monkeypatch.setattr(ck, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, step=2, model=small_model(1), state={"step": 2})
    monkeypatch.undo()
    got = ck.load_checkpoint(tmp_path)  # the new files exist, but the manifest names step 1
    assert got.step == 1 and got.state["step"] == 1
    expected = small_model(0).state_dict()
    assert all(torch.equal(got.weights[k], expected[k]) for k in expected)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "fsync", boom)
    with pytest.raises(OSError):
        ck.atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def _files(tmp_path):
    m = json.loads((tmp_path / ck.CKPT_DIR / ck.MANIFEST).read_text())
    return {k: tmp_path / ck.CKPT_DIR / v["name"] for k, v in m["files"].items()}


@pytest.mark.parametrize("which", ["weights", "state"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_files_raise_checkpoint_error(tmp_path, which, damage):
    ck.save_checkpoint(tmp_path, step=3, model=small_model(0), state={"step": 3})
    path = _files(tmp_path)[which]
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        path.unlink()
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint(tmp_path)
    assert path.name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["", "{not json", '{"format": 1}', '{"format": 99, "step": 1, "files": {}}'])
def test_bad_manifest_raises_checkpoint_error(tmp_path, text):
    ck.save_checkpoint(tmp_path, step=3, model=small_model(0), state={"step": 3})
    (tmp_path / ck.CKPT_DIR / ck.MANIFEST).write_text(text)
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(tmp_path)


def test_missing_checkpoint_and_shape_mismatch(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ck.load_checkpoint(tmp_path)
    ck.save_checkpoint(tmp_path, step=1, model=small_model(0), state={})
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match="does not fit"):
        ck.load_weights(other, ck.load_checkpoint(tmp_path).weights)


def test_manifest_digest_matches_file(tmp_path):
    ck.save_checkpoint(tmp_path, step=1, model=small_model(0), state={"x": 1})
    m = json.loads((tmp_path / ck.CKPT_DIR / ck.MANIFEST).read_text())
    for entry in m["files"].values():
        data = (tmp_path / ck.CKPT_DIR / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]


def reference_lr(step, warmup, total, min_ratio):
    """Written out case by case, independently of the implementation."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= total:
        return min_ratio
    t = (step - warmup) / (total - warmup)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("warmup, total, min_ratio", [(0, 10, 0.1), (3, 10, 0.0), (5, 20, 1.0)])
def test_schedule_matches_reference(warmup, total, min_ratio):
    for step in range(total + 5):
        assert lr_factor(step, warmup=warmup, total=total, min_ratio=min_ratio) == pytest.approx(
            reference_lr(step, warmup, total, min_ratio))
    if warmup:
        assert lr_factor(warmup - 1, warmup=warmup, total=total, min_ratio=min_ratio) == 1.0
