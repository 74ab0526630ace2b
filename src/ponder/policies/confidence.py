"""confidence: CALM — exit a token as soon as its per-step readout is confident enough.

After step n the token's confidence c^n is one of (knob ``measure``):
- ``softmax``: top-1 minus top-2 probability of the per-step readout (shared coda + head);
- ``saturation``: cosine similarity of consecutive states, cos(h^n, h^{n−1});
- ``classifier``: a learned exit classifier σ(w·h^n + b), trained with a binary
  cross-entropy towards "the prediction at n equals the prediction at N" (labels from the
  per-step readouts of the same forward, every token running N steps in training). Its input
  is detached, so the BCE trains the classifier only, never the backbone; the BCE (times
  ``classifier_weight``) is the policy's ``aux_loss``, so the model's loss trains it.
The token exits at the first n with c^n ≥ λ_t, **per token** (the public code takes one
decision for the whole batch; that is a known bug). With ``decay`` the threshold falls with
the position t = 0, 1, … of the token (CALM's decoding schedule, for causal models):
``λ'(t) = 0.9λ + 0.1λ·exp(−4t/T)`` with T = ``decay_length``.

Training: weighted per-exit losses ``Σ_n w_n·CE(y^n)``, w_n ∝ n (``objective = "per_step"``).
λ can be calibrated on held-out data with Learn-then-Test (:mod:`ponder.policies.calibration`).
Causal: the decision for token t reads only token t's state and readout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.policies._per_exit import PerExitPolicy, wide
from ponder.policies.base import View, knob
from ponder.policies.halting import masked_mean
from ponder.policies.registry import register

MEASURES = ("softmax", "saturation", "classifier")


@dataclass(frozen=True)
class ConfidenceKnobs:
    threshold: float = knob(0.9, 0.0, 1.0, "λ: exit when the confidence reaches it")
    measure: str = knob("softmax", choices=MEASURES,
                        help="softmax (top-1 − top-2 prob) | saturation (cos of consecutive states) | "
                             "classifier (learned exit classifier)")
    decay: bool = knob(False, help="lower λ with the position t: λ'(t) = 0.9λ + 0.1λ·exp(−4t/T) (causal decoding)")
    decay_length: int = knob(64, 1, 1_000_000, "T of the decay schedule (maximum decoding length)")
    classifier_weight: float = knob(1.0, 0.0, 100.0, "weight of the exit classifier's BCE (measure=classifier)")


def decayed_threshold(threshold: float, positions: torch.Tensor, length: int) -> torch.Tensor:
    """CALM's schedule ``λ'(t) = 0.9λ + 0.1λ·exp(−4t/T)``: positions [...] → thresholds [...]."""
    return 0.9 * threshold + 0.1 * threshold * torch.exp(-4.0 * positions.double() / length)


def softmax_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability: logits [B, L, V] → [B, L] in [0, 1] (1 when V = 1)."""
    probs = torch.softmax(wide(logits), -1)
    if probs.shape[-1] < 2:
        return torch.ones_like(probs[..., 0])
    top = probs.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def saturation(h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """cos(h^n, h^{n−1}): [B, L, D] × [B, L, D] → [B, L] (0 for a zero vector, never NaN)."""
    return F.cosine_similarity(wide(h), wide(prev), dim=-1, eps=1e-8)


@register
class Confidence(PerExitPolicy):
    name = "confidence"
    kinds = ("recurrent", "stacked")
    paper = ("Schuster, Fisch, Gupta, Dehghani, Bahri, Tran, Tay, Metzler 2022, "
             "Confident Adaptive Language Modeling (CALM)")
    Knobs = ConfidenceKnobs
    # Learn-then-Test sets this (not a knob): it replaces λ while calibrating; math.inf = full depth
    threshold_override: Optional[float] = None

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        if self.knobs.measure == "classifier":
            self.exit_head = nn.Linear(d_model, 1)

    @property
    def threshold(self) -> float:
        return self.knobs.threshold if self.threshold_override is None else self.threshold_override

    def thresholds(self, view: View) -> torch.Tensor:
        """λ per token [B, L] (or a 0-dim tensor when it does not depend on the position)."""
        lam = self.threshold
        if not self.knobs.decay or math.isinf(lam):
            return torch.tensor(lam, dtype=torch.float64, device=view.mask.device)
        positions = torch.arange(view.mask.shape[1], device=view.mask.device)
        return decayed_threshold(lam, positions, self.knobs.decay_length).expand(view.mask.shape)

    def confidence(self, memo: dict, view: View) -> torch.Tensor:
        """c^n per token [B, L] (detached)."""
        measure = self.knobs.measure
        if measure == "softmax":
            return softmax_margin(view.logits())
        if measure == "saturation":
            return saturation(view.h, view.prev)
        z = self.exit_head(view.h.detach()).squeeze(-1)  # [B, L]
        if view.training:
            memo["exit_logit"].append(z)
            memo["pred"].append(view.logits().detach().argmax(-1))
        return torch.sigmoid(wide(z))

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["exit_logit"], memo["pred"] = [], []
        return memo

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        return self.confidence(memo, view).double() >= self.thresholds(view)

    def extra_loss(self, memo: dict, view: View) -> Optional[torch.Tensor]:
        """measure=classifier, training: BCE of the exit classifier against 1[ŷ^n = ŷ^N].

        Steps 1..N−1 (at N the label is trivially 1; kept only when N = 1), averaged over real
        tokens; eval has no full-depth prediction, so no loss there.
        """
        if not memo["exit_logit"]:
            return None
        z = torch.stack(memo["exit_logit"], -1)            # [B, L, N]
        pred = torch.stack(memo["pred"], -1)               # [B, L, N]
        labels = (pred == pred[..., -1:]).to(z.dtype)
        if z.shape[-1] > 1:
            z, labels = z[..., :-1], labels[..., :-1]
        bce = F.binary_cross_entropy_with_logits(z, labels, reduction="none").mean(-1)
        return self.knobs.classifier_weight * masked_mean(bce, view.mask)
