"""A small padded batch for model tests: the same shape of inputs everywhere."""

from __future__ import annotations

import torch

from ponder.tasks.batching import IGNORE_INDEX


def padded_batch(*, vocab: int, B: int = 4, L: int = 9, seed: int = 0, short: int = 3):
    """tokens [B, L], mask [B, L] with two padded rows (row 1 loses its last 3 tokens, row 2
    keeps only ``short``), targets [B, L] with pads ignored."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, L - 3:] = False
    mask[2, short:] = False
    targets = torch.randint(0, vocab, (B, L), generator=g).masked_fill(~mask, IGNORE_INDEX)
    return tokens, mask, targets
