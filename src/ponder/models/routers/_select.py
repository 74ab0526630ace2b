"""Per-sequence top-k among candidate tokens (shared by the routers that pick by capacity)."""

from __future__ import annotations

import math

import torch

# ``capacity · n`` is computed in floating point: 0.1 · 30 = 3.0000000000000004 must give 3
_ROUND = 1e-9


def capacity_k(capacity: float, n: torch.Tensor) -> torch.Tensor:
    """n [B] long candidates per sequence → k [B] long: ⌈capacity·n⌉, at least 1 where n > 0
    and never more than n."""
    k = torch.ceil(n.to(torch.float64) * capacity - _ROUND).long()
    return torch.minimum(k.clamp(min=1), n)


def top_k_mask(score: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """score [B, L], candidates [B, L] bool, k [B] long → [B, L] bool: per sequence the k
    candidates of highest score (ties: the earlier position first)."""
    B, L = score.shape
    s = score.detach().masked_fill(~candidates, -math.inf)
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(L, device=score.device).expand(B, L))
    return (rank < k[:, None]) & candidates
