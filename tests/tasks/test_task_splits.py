"""Splits as data: ood lies beyond train, test and train are disjoint, examples are
deterministic across processes and batchings, complexity is spread, bad knobs are refused."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import ponder.tasks as T
from ponder.errors import ConfigError
from ponder.tasks.base import SPLITS
from ponder.tasks.vocab import Vocab

TASKS = T.names()
MINE = ("running_parity", "addition", "listops", "arithmetic", "table_lookup", "list_rank")


def ranges(params: dict) -> dict[str, tuple]:
    return {k: v for k, v in params.items() if isinstance(v, tuple) and len(v) == 2}


@pytest.mark.parametrize("name", TASKS)
def test_ood_knobs_lie_strictly_beyond_train(name: str) -> None:
    task = T.get(name)
    train, ood = ranges(task.split_params("train")), ranges(task.split_params("ood"))
    for split in ("valid", "test"):
        assert task.split_params(split) == task.split_params("train")
    beyond = [k for k in train if k in ood and ood[k][0] > train[k][1]]
    assert beyond, f"no size/depth range of ood lies beyond train: train {train}, ood {ood}"
    for k in train:
        if k in ood:
            assert ood[k][1] >= train[k][1], f"ood range {k}={ood[k]} reaches below train's {train[k]}"
    # And the drawn examples say so too.
    for i in range(100):
        tp, op = task.example("train", i).params, task.example("ood", i).params
        for k in beyond:
            if k in tp:
                assert train[k][0] <= tp[k] <= train[k][1]
                assert op[k] > train[k][1]


@pytest.mark.parametrize("name", TASKS)
def test_test_and_train_share_no_example(name: str) -> None:
    task = T.get(name)
    train = {tuple(task.example("train", i).input) for i in range(1_000)}
    for split in ("test", "valid"):
        held = {tuple(task.example(split, i).input) for i in range(300)}
        assert not held & train, f"{split} and train share {len(held & train)} inputs"
    assert not ({tuple(task.example("test", i).input) for i in range(300)}
                & {tuple(task.example("valid", i).input) for i in range(300)})


_CHILD = """
import json, sys
import ponder.tasks as T
out = {n: [T.get(n).example(s, i).to_json() for s in T.SPLITS for i in (0, 7, 123)] for n in T.names()}
json.dump(out, sys.stdout)
"""


def test_examples_identical_in_a_fresh_process() -> None:
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    child = json.loads(proc.stdout)
    assert sorted(child) == TASKS
    for name in TASKS:
        here = [json.loads(json.dumps(T.get(name).example(s, i).to_json()))
                for s in SPLITS for i in (0, 7, 123)]
        assert child[name] == here, f"{name}: examples differ in a fresh process"


@pytest.mark.parametrize("name", TASKS)
def test_examples_independent_of_batch_size_and_world(name: str) -> None:
    task = T.get(name)
    vocab = Vocab.for_task(task)
    reference = {i: T.get(name).example("train", i) for i in range(24)}
    for batch_size, world in ((4, 1), (6, 1), (8, 2), (12, 3)):
        got: dict[int, T.Example] = {}
        for rank in range(world):
            for batch in T.stream(task, "train", vocab, batch_size=batch_size,
                                  num_batches=24 // batch_size, rank=rank, world=world):
                for ex, idx in zip(batch.examples, batch.indices.tolist()):
                    assert ex.index == idx and idx not in got
                    got[idx] = ex
        assert got == reference, f"batch_size={batch_size} world={world} changed the examples"


@pytest.mark.parametrize("name", ["list_rank", "listops", "addition", "graph_distance"])
def test_complexity_takes_at_least_four_values_in_valid(name: str) -> None:
    task = T.get(name)  # an unregistered name fails here (ConfigError), it is never skipped
    values = {c for i in range(300) for c in task.example("valid", i).complexity if c is not None}
    assert len(values) >= 4, f"{name}: complexity values {sorted(values)}"


@pytest.mark.parametrize("name", TASKS)
def test_bad_knobs_raise_config_error(name: str) -> None:
    cls = T.task_class(name)
    with pytest.raises(ConfigError):
        T.get(name, no_such_knob=1)
    with pytest.raises(ConfigError):
        T.get(name, preset="no_such_preset")
    for f in dataclasses.fields(cls.Config):
        lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
        if isinstance(f.default, bool):
            with pytest.raises(ConfigError):
                T.get(name, **{f.name: "yes"})
            continue
        if choices is not None:
            with pytest.raises(ConfigError):
                T.get(name, **{f.name: "not-a-choice"})
        if hi is not None:
            with pytest.raises(ConfigError):
                T.get(name, **{f.name: type(f.default)(hi) + 1})
        if lo is not None:
            with pytest.raises(ConfigError):
                T.get(name, **{f.name: type(f.default)(lo) - 1})
        if isinstance(f.default, (int, float)):
            with pytest.raises(ConfigError):
                T.get(name, **{f.name: "3"})


# ood_<x>_min must exceed <x>_max, and min <= max, for the families of this module set.
CROSS = {"running_parity": "n", "addition": "n", "listops": "depth", "arithmetic": "depth",
         "table_lookup": "depth", "list_rank": "m"}


@pytest.mark.parametrize("name", MINE)
def test_cross_knob_checks(name: str) -> None:
    x = CROSS[name]
    d = T.get(name).knobs()
    with pytest.raises(ConfigError, match="strictly beyond"):
        T.get(name, **{f"ood_{x}_min": d[f"{x}_max"], f"ood_{x}_max": d[f"ood_{x}_max"]})
    with pytest.raises(ConfigError):
        T.get(name, **{f"{x}_min": d[f"{x}_max"] + 1})
    with pytest.raises(ConfigError):
        T.get(name, **{f"ood_{x}_min": d[f"ood_{x}_max"] + 1})
    # Exactly at the edge is fine.
    T.get(name, **{f"ood_{x}_min": d[f"{x}_max"] + 1})


def test_list_rank_needs_enough_labels() -> None:
    with pytest.raises(ConfigError, match="n_labels"):
        T.get("list_rank", n_labels=15)


def test_split_and_index_are_checked() -> None:
    task = T.get("listops")
    with pytest.raises(ConfigError):
        task.example("nope", 0)
    with pytest.raises(ConfigError):
        task.example("train", -1)


@pytest.mark.parametrize("name", TASKS)
def test_train_labels_cover_train_targets(name: str) -> None:
    task = T.get(name)
    labels = task.train_labels()
    if type(task).train_labels is T.Task.train_labels:
        assert task.train_labels() is labels  # the sampling default is cached per task
    seen = {t for i in range(300) for t in task.example("train", i).target if t is not None}
    assert seen <= labels


def test_list_rank_train_labels_exact_and_ood_has_unseen() -> None:
    task = T.get("list_rank")
    assert task.train_labels() == frozenset(str(d) for d in range(10))
    sampled = T.Task.train_labels(T.get("list_rank"))  # the generic, sampling default
    assert sampled == task.train_labels()
    ood = [t for i in range(50) for t in task.example("ood", i).target if t is not None]
    unseen = [t for t in ood if t not in task.train_labels()]
    assert unseen and len(unseen) < len(ood)
    for split in SPLITS:
        for i in range(50):
            ex = task.example(split, i)
            flags = [f for f in ex.features["unseen_label"] if f is not None]
            labels = [t for t in ex.target if t is not None]
            assert flags == [int(t not in task.train_labels()) for t in labels]


@pytest.mark.parametrize("name", [n for n in TASKS if "unseen_label" in T.get(n).example("ood", 0).features])
def test_unseen_label_feature_agrees_with_train_labels(name: str) -> None:
    """Tasks that flag unseen ood labels per token agree with ``Task.train_labels``."""
    task = T.get(name)
    labels = task.train_labels()
    flagged = 0
    for i in range(100):
        ex = task.example("ood", i)
        for t, f in zip(ex.target, ex.features["unseen_label"]):
            if t is not None:
                assert f == int(t not in labels), f"ood #{i}: label {t!r} flagged {f}"
                flagged += f
    assert flagged > 0
