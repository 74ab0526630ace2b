"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio`` of the peak."""

from __future__ import annotations

import math

import torch

from ponder.train.config import ScheduleConfig


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based).

    Warm-up ramps linearly over ``warmup`` steps (step 0 gets ``1/warmup``); the cosine
    then falls from 1 at ``warmup`` to ``min_ratio`` at ``total`` and stays there.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig,
                   run_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = cfg.total if cfg.total is not None else max(1, run_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=cfg.warmup, total=total, min_ratio=cfg.min_ratio))
