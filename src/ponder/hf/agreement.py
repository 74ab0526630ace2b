"""Per-layer agreement with the final layer: how often layer l's readout (final norm + LM
head) has the final layer's arg-max, teacher-forced on given sequences — what a draft of
depth l or an exit at l can hope for."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from ponder.hf.stack import LayerStack

IGNORE = -100


@torch.no_grad()
def layer_agreement(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Optional[torch.Tensor]]]
                    ) -> dict:
    """batches of (tokens [B, T], targets [B, T] with −100 at unscored positions, or None:
    score every position) → {"agreement": [L] fraction of scored positions where layer l's
    arg-max is the final layer's, "accuracy": [L] where it is the target (None without
    targets), "positions": count}."""
    stack = LayerStack(model)
    was_training = model.training
    model.eval()
    agree = torch.zeros(stack.L, dtype=torch.float64)
    correct = torch.zeros(stack.L, dtype=torch.float64)
    total = 0
    have_targets = True
    for tokens, targets in batches:
        tokens = tokens.to(stack.device)
        pred = stack.layer_logits(tokens).argmax(-1)              # [L, B, T]
        if targets is None:
            have_targets = False
            scored = torch.ones_like(tokens, dtype=torch.bool)
        else:
            targets = targets.to(stack.device)
            scored = targets != IGNORE
            correct += ((pred == targets[None]) & scored[None]).sum((1, 2)).double().cpu()
        agree += ((pred == pred[-1:]) & scored[None]).sum((1, 2)).double().cpu()
        total += int(scored.sum())
    model.train(was_training)
    n = max(1, total)
    return {"agreement": (agree / n).tolist(),
            "accuracy": (correct / n).tolist() if have_targets else None, "positions": total}
