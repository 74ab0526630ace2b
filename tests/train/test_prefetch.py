"""The prefetcher yields exactly the plain iterator's items, in order, and passes errors on."""

from __future__ import annotations

import pytest
import torch

import ponder.tasks
from ponder.tasks import Vocab, stream
from ponder.train.prefetch import Prefetcher


def test_same_batches_in_the_same_order():
    task = ponder.tasks.get("list_rank")
    vocab = Vocab.for_task(task)
    plain = list(stream(task, "train", vocab, batch_size=8, start_batch=3, num_batches=5))
    pre = Prefetcher(stream(task, "train", vocab, batch_size=8, start_batch=3, num_batches=5))
    got = list(pre)
    pre.close()
    assert len(got) == len(plain) == 5
    for a, b in zip(plain, got):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.indices, b.indices)


def test_errors_reach_the_consumer_and_close_stops_an_endless_source():
    def broken():
        yield 1
        raise ValueError("bad example")

    pre = Prefetcher(broken())
    assert next(pre) == 1
    with pytest.raises(ValueError, match="bad example"):
        next(pre)
    endless = Prefetcher(iter(int, 1))  # never ends
    assert next(endless) == 0
    endless.close()
    assert not endless._thread.is_alive()
