"""Logits processors and the one sampler every decoder uses (plain, speculative, self-speculative).

A :class:`Sampling` turns logits into the distribution a token is drawn from: temperature,
then top-k, then top-p (nucleus), computed in float64. ``temperature = 0`` is greedy: the
distribution is the one-hot of the arg-max (ties: the lowest id, as ``argmax``). Speculative
decoding applies the same :meth:`Sampling.probs` to the draft's and the target's logits, so
its acceptance rule (:mod:`ponder.generate.speculative`) is exact for the processed
distribution — and with greedy one-hots it reduces to "accept while the draft is the target's
arg-max", i.e. exactly the plain greedy output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ponder.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """temperature ≥ 0 (0: greedy); top_k ≥ 0 (0: off); top_p in (0, 1] (1: off)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0) or self.temperature == float("inf"):
            raise ConfigError(f"temperature={self.temperature} must be a finite number >= 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k} must be an integer >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p={self.top_p} must lie in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., V] → the processed distribution [..., V] float64 (rows sum to 1)."""
        z = logits.detach().double()
        V = z.shape[-1]
        if self.greedy:
            return torch.nn.functional.one_hot(z.argmax(-1), V).double()
        z = z / self.temperature
        if 0 < self.top_k < V:
            kth = z.topk(self.top_k, dim=-1).values[..., -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        p = torch.softmax(z, -1)
        if self.top_p < 1.0:
            # keep the smallest set of most likely tokens whose mass reaches top_p: a token
            # stays when the mass strictly before it (in descending order) is below top_p
            sorted_p, order = p.sort(-1, descending=True)
            before = sorted_p.cumsum(-1) - sorted_p
            keep_sorted = before < self.top_p
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            p = torch.where(keep, p, torch.zeros_like(p))
            p = p / p.sum(-1, keepdim=True)
        return p

    def pick(self, logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """logits [..., V] → token ids [...] long (greedy: the arg-max, no random draw)."""
        if self.greedy:
            return logits.argmax(-1)
        return draw(self.probs(logits), generator)


def draw(probs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One id per row of ``probs [..., V]`` (float64, rows summing to 1) → [...] long."""
    flat = probs.reshape(-1, probs.shape[-1])
    ids = torch.multinomial(flat, 1, generator=generator).squeeze(1)
    return ids.view(probs.shape[:-1])
