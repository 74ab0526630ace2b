"""Collating examples into padded tensors, and the rank partition of a global batch."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.tasks as T
from ponder.errors import ConfigError
from ponder.tasks.batching import IGNORE_INDEX, NO_COMPLEXITY

TASKS = T.names()


@pytest.mark.parametrize("name", TASKS)
def test_collate_shapes_and_values(name: str) -> None:
    task = T.get(name)
    vocab = T.Vocab.for_task(task)
    examples = [task.example("valid", i) for i in range(7)]
    batch = T.collate(examples, vocab)
    B, L = 7, max(len(e.input) for e in examples)
    assert len(batch) == B
    for t in (batch.tokens, batch.targets, batch.complexity, batch.mask):
        assert t.shape == (B, L)
    assert batch.tokens.dtype == torch.long and batch.mask.dtype == torch.bool
    assert batch.indices.tolist() == list(range(7))
    assert set(batch.features) == {k for e in examples for k in e.features}
    for b, e in enumerate(examples):
        n = len(e.input)
        assert batch.mask[b].tolist() == [True] * n + [False] * (L - n)
        assert vocab.decode(batch.tokens[b, :n].tolist()) == e.input
        assert (batch.tokens[b, n:] == vocab.pad_id).all()
        for i in range(L):
            t = e.target[i] if i < n else None
            if t is None:
                assert batch.targets[b, i] == IGNORE_INDEX
                assert batch.complexity[b, i] == NO_COMPLEXITY
            else:
                assert vocab.itos[batch.targets[b, i]] == t
                assert batch.complexity[b, i] == e.complexity[i]
        pos = batch.features["position"][b]
        assert pos[:n].tolist() == [float(p) for p in range(n)]
        assert all(math.isnan(v) for v in pos[n:].tolist())


def test_collate_empty_is_refused() -> None:
    with pytest.raises(ConfigError):
        T.collate([], T.Vocab(["a"]))


@pytest.mark.parametrize("batch_size,world", [(8, 1), (8, 2), (12, 3), (12, 4), (16, 8)])
def test_rank_partition_is_disjoint_and_covers_the_global_batch(batch_size: int, world: int) -> None:
    for b in range(3):
        parts = [T.rank_indices(b, batch_size, rank, world) for rank in range(world)]
        flat = [i for p in parts for i in p]
        assert len(flat) == len(set(flat)) == batch_size
        assert sorted(flat) == list(range(b * batch_size, (b + 1) * batch_size))
        assert all(len(p) == batch_size // world for p in parts)


def test_rank_indices_refuses_bad_ranks() -> None:
    with pytest.raises(ConfigError):
        T.rank_indices(0, 8, rank=2, world=2)
    with pytest.raises(ConfigError):
        T.rank_indices(0, 10, rank=0, world=3)
    with pytest.raises(ConfigError):
        T.rank_indices(0, 8, rank=0, world=0)


def test_stream_ranks_together_equal_one_process() -> None:
    task = T.get("listops")
    vocab = T.Vocab.for_task(task)
    whole = list(T.stream(task, "train", vocab, batch_size=8, start_batch=2, num_batches=2))
    for k, batch in enumerate(whole):
        parts = [next(iter(T.stream(task, "train", vocab, batch_size=8, start_batch=2 + k,
                                    num_batches=1, rank=r, world=4))) for r in range(4)]
        by_index = {e.index: e for p in parts for e in p.examples}
        assert sorted(by_index) == batch.indices.tolist()
        assert [by_index[i] for i in batch.indices.tolist()] == batch.examples


def test_vocab_has_specials_first_and_roundtrips() -> None:
    task = T.get("list_rank")
    vocab = T.Vocab.for_task(task)
    assert vocab.itos[:2] == [T.PAD, T.SLOT] and vocab.pad_id == 0
    ex = task.example("ood", 3)
    assert vocab.decode(vocab.encode(ex.input)) == ex.input
    with pytest.raises(ConfigError):
        vocab.encode(["definitely-not-a-token"])
