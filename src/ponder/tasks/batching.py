"""From examples to padded tensors, and a stream of batches by example index.

Rank ``r`` of ``w`` processes takes, from global batch ``b`` (examples
``b*B .. (b+1)*B-1``), the indices ``i`` with ``i % w == r``; so every rank reads its own
disjoint examples and ``w`` processes together see exactly the 1-process global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ponder.errors import ConfigError
from ponder.tasks.base import Example, Task
from ponder.tasks.vocab import Vocab

IGNORE_INDEX = -100  # targets at unscored positions (torch's cross-entropy default)
NO_COMPLEXITY = -1   # complexity at unscored positions


@dataclass
class Batch:
    """A padded batch.

    tokens      [B, L] long   input ids (``vocab.pad_id`` after the end)
    targets     [B, L] long   target ids, ``IGNORE_INDEX`` where not scored
    complexity  [B, L] long   ``NO_COMPLEXITY`` where not scored
    mask        [B, L] bool   True at real (non-pad) positions
    features    name → [B, L] float, NaN where undefined
    indices     [B] long      example indices within ``split``
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    complexity: torch.Tensor
    mask: torch.Tensor
    features: dict[str, torch.Tensor]
    indices: torch.Tensor
    split: str
    params: list[dict[str, Any]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.tokens.to(device), self.targets.to(device), self.complexity.to(device),
                     self.mask.to(device), {k: v.to(device) for k, v in self.features.items()},
                     self.indices.to(device), self.split, self.params, self.examples)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan  # non-numeric features are kept on the examples, not in tensors


def collate(examples: list[Example], vocab: Vocab) -> Batch:
    """Pad a list of examples into a :class:`Batch`."""
    if not examples:
        raise ConfigError("cannot collate an empty list of examples")
    B, L = len(examples), max(len(e.input) for e in examples)
    tokens = torch.full((B, L), vocab.pad_id, dtype=torch.long)
    targets = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    complexity = torch.full((B, L), NO_COMPLEXITY, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.bool)
    names = sorted({k for e in examples for k in e.features})
    features = {k: torch.full((B, L), math.nan) for k in names}
    for b, e in enumerate(examples):
        n = len(e.input)
        tokens[b, :n] = torch.tensor(vocab.encode(e.input))
        mask[b, :n] = True
        for i, (t, c) in enumerate(zip(e.target, e.complexity)):
            if t is not None:
                targets[b, i] = vocab.stoi[t]
                complexity[b, i] = int(c)
        for k, values in e.features.items():
            features[k][b, :n] = torch.tensor([_number(v) for v in values])
    indices = torch.tensor([e.index for e in examples], dtype=torch.long)
    return Batch(tokens, targets, complexity, mask, features, indices, examples[0].split,
                 [e.params for e in examples], examples)


def rank_indices(batch: int, batch_size: int, rank: int = 0, world: int = 1) -> list[int]:
    """Example indices that ``rank`` of ``world`` reads for global batch number ``batch``."""
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad rank {rank} of world size {world}")
    if batch_size % world:
        raise ConfigError(f"global batch size {batch_size} is not divisible by {world} processes")
    start = batch * batch_size
    return [i for i in range(start, start + batch_size) if i % world == rank]


def stream(task: Task, split: str, vocab: Vocab, *, batch_size: int, start_batch: int = 0,
           num_batches: int | None = None, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """Batches ``start_batch, start_batch+1, ...`` of ``split`` (endless if ``num_batches`` is None)."""
    b = start_batch
    while num_batches is None or b < start_batch + num_batches:
        yield collate([task.example(split, i) for i in rank_indices(b, batch_size, rank, world)], vocab)
        b += 1
