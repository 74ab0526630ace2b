"""Per-token exit rules at decode time (CALM and the training-free recurrent exits).

A rule is called by the decoder after core step n < N for the chunk's tokens and returns
which of them exit now (``[B, T] bool``; the decoder only applies it to tokens still
running). The confidence measures are those of :mod:`ponder.policies.confidence`:

- ``softmax``: top-1 minus top-2 probability of the token's readout at its current state
  (the decode-time readout goes through the coda over the cached keys, without writing);
- ``saturation``: cos(h^n, h^{n−1}) (CALM's state saturation; on a recurrent model the
  training-free convergence exit);
- ``classifier``: σ(w·h^n + b), the exit head a ``confidence`` policy with
  ``measure=classifier`` trained.

The threshold may decay with the token's position t (CALM's schedule
``λ'(t) = 0.9λ + 0.1λ·exp(−4t/T)``). With the same knobs as the model's ``confidence``
policy (:func:`rule_from_policy`) and no coda, decoding exits exactly where that policy
exits in the uncached forward (test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.policies.confidence import MEASURES, decayed_threshold, saturation, softmax_margin


@dataclass
class ConfidenceExit:
    """Exit when the confidence of ``measure`` reaches λ (per token, per sample).

    threshold     λ in [0, 1] (math.inf: never exit)
    measure       softmax | saturation | classifier
    decay         lower λ with the position (``decay_length`` = T)
    head          the exit classifier [D] → 1 (measure=classifier)
    """

    threshold: float
    measure: str = "softmax"
    decay: bool = False
    decay_length: int = 64
    head: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ConfigError(f"unknown exit measure {self.measure!r}; measures: {', '.join(MEASURES)}")
        if not (0.0 <= self.threshold <= 1.0 or math.isinf(self.threshold)):
            raise ConfigError(f"exit threshold={self.threshold} must lie in [0, 1]")
        if self.decay_length < 1:
            raise ConfigError(f"decay_length={self.decay_length} must be at least 1")
        if self.measure == "classifier" and self.head is None:
            raise ConfigError("the classifier exit needs a model trained with policy confidence, "
                              "measure=classifier")

    @property
    def needs_logits(self) -> bool:
        return self.measure == "softmax"

    def thresholds(self, position: torch.Tensor) -> torch.Tensor:
        """λ per token: position [B, T] → [B, T] float64 (or a 0-dim tensor)."""
        if not self.decay or math.isinf(self.threshold):
            return torch.tensor(self.threshold, dtype=torch.float64, device=position.device)
        return decayed_threshold(self.threshold, position, self.decay_length)

    def confidence(self, *, h: torch.Tensor, prev: torch.Tensor,
                   logits: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.measure == "softmax":
            return softmax_margin(logits())
        if self.measure == "saturation":
            return saturation(h, prev)
        return torch.sigmoid(self.head(h).squeeze(-1).double())

    def __call__(self, *, n: int, max_steps: int, h: torch.Tensor, prev: torch.Tensor,
                 logits: Callable[[], torch.Tensor], position: torch.Tensor) -> torch.Tensor:
        c = self.confidence(h=h, prev=prev, logits=logits).double()
        return c >= self.thresholds(position)


def rule_from_policy(policy: nn.Module, *, threshold: Optional[float] = None) -> ConfidenceExit:
    """The decode-time rule of a model's ``confidence`` policy (its measure, λ, decay, exit
    head); ``threshold`` replaces λ (e.g. one calibrated by Learn-then-Test)."""
    if getattr(policy, "name", None) != "confidence":
        raise ConfigError(f"policy {getattr(policy, 'name', policy)!r} has no decode-time exit rule; "
                          "give --exit MEASURE:THRESHOLD")
    k = policy.knobs
    return ConfidenceExit(threshold=policy.threshold if threshold is None else threshold,
                          measure=k.measure, decay=k.decay, decay_length=k.decay_length,
                          head=getattr(policy, "exit_head", None))


def parse_exit(text: str, policy: Optional[nn.Module] = None) -> ConfidenceExit:
    """``MEASURE:THRESHOLD[:decay]`` (e.g. ``softmax:0.9``, ``saturation:0.99:decay``) or
    ``policy`` (the model's own confidence policy) → a rule; bad text → ConfigError."""
    if text == "policy":
        return rule_from_policy(policy)
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "decay"):
        raise ConfigError(f"exit {text!r}: expected MEASURE:THRESHOLD[:decay] or 'policy'")
    try:
        lam = float(parts[1])
    except ValueError:
        raise ConfigError(f"exit {text!r}: threshold {parts[1]!r} is not a number") from None
    head = getattr(policy, "exit_head", None) if policy is not None else None
    return ConfidenceExit(threshold=lam, measure=parts[0], decay=len(parts) == 3, head=head)


def calibrate_exit(model: nn.Module, prompts: list[list[int]], *, measure: str,
                   candidates: list[float], delta: float, epsilon: float, max_new: int,
                   eos: Optional[int], decay: bool = False, decay_length: int = 64,
                   batch: int = 16, pad: int = 0):
    """Learn-then-Test at decode time: the smallest λ of the ``measure`` exit whose greedy
    generations differ from the full-depth greedy ones on at most a fraction δ of sequences,
    with probability ≥ 1 − ε over the calibration prompts (``ponder.policies.calibration``:
    binomial tail, fixed-sequence testing from the largest λ down; sequences are independent,
    so the unit is the sequence). → :class:`~ponder.policies.calibration.Calibration`
    (``threshold`` None: no candidate certified, decode at full depth)."""
    from ponder.generate.loop import generate
    from ponder.policies.calibration import binomial_p_value, check_levels, Calibration

    check_levels(delta, epsilon)
    if not candidates or not prompts:
        raise ConfigError("calibration needs at least one candidate threshold and one prompt")
    head = getattr(model.policy, "exit_head", None)

    def outputs(rule: Optional[ConfidenceExit]) -> list[list[int]]:
        toks: list[list[int]] = []
        for s in range(0, len(prompts), batch):
            toks += generate(model, prompts[s:s + batch], max_new=max_new, eos=eos, rule=rule,
                             pad=pad).tokens
        return toks

    full = outputs(None)
    result = Calibration(threshold=None, n=len(prompts))
    for lam in sorted(candidates, reverse=True):  # fixed-sequence: most conservative first
        rule = ConfidenceExit(threshold=lam, measure=measure, decay=decay,
                              decay_length=decay_length, head=head)
        k = sum(a != b for a, b in zip(outputs(rule), full))
        p = binomial_p_value(k, len(prompts), delta)
        rejected = p <= epsilon
        result.tested.append((float(lam), k / len(prompts), p, rejected))
        if not rejected:
            break
        result.threshold = float(lam)
    return result
