"""Validation: token / sequence accuracy, loss and mean steps over a fixed set of batches."""

from __future__ import annotations

from typing import Iterable

import torch

from ponder.tasks.batching import IGNORE_INDEX, Batch
from ponder.train.distributed import World, all_reduce_sum
from ponder.train.segments import forward_segments


def batch_counts(logits: torch.Tensor, steps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sums over one batch: [scored tokens, correct tokens, steps on scored tokens,
    sequences with a scored token, fully correct such sequences] as a float64 vector.

    logits [B, L, V], steps [B, L], targets [B, L] (IGNORE_INDEX where unscored).
    """
    scored = targets != IGNORE_INDEX
    correct = (logits.argmax(-1) == targets) & scored
    has_scored = scored.any(-1)
    seq_ok = (correct | ~scored).all(-1) & has_scored
    return torch.stack([scored.sum(), correct.sum(), (steps * scored).sum(),
                        has_scored.sum(), seq_ok.sum()]).to(torch.float64)


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[Batch], *, world: World,
             device: torch.device, segments: int = 1) -> dict[str, float]:
    """Metrics over ``batches`` (this rank's share), summed over every rank. ``segments``:
    deep supervision's segments (:func:`ponder.train.segments.forward_segments`)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    for batch in batches:
        tokens, mask, targets = batch.tokens.to(device), batch.mask.to(device), batch.targets.to(device)
        out = forward_segments(model, tokens, mask, segments=segments)
        loss, _ = model.loss(out, targets)
        counts = batch_counts(out.logits, out.steps, targets)
        sums[:5] += counts
        sums[5] += float(loss) * counts[0]
    all_reduce_sum(sums, world)
    model.train(was_training)
    n, correct, steps, n_seq, seq_ok, loss_sum = sums.tolist()
    return {"loss": loss_sum / max(n, 1), "token_acc": correct / max(n, 1),
            "seq_acc": seq_ok / max(n_seq, 1), "mean_steps": steps / max(n, 1), "n_tokens": int(n)}
