"""Learn-then-Test calibration of an early-exit threshold (CALM's guarantee).

Goal: the smallest threshold λ (the most compute saved) such that the *disagreement* between
the early-exit prediction and the full-depth prediction stays ≤ δ, with probability ≥ 1 − ε
over the draw of the calibration data.

Procedure (Angelopoulos, Bates, Candès, Jordan, Lei 2021, "Learn then Test"; as in CALM):
- For each candidate λ, the empirical risk R̂(λ) = k/n: k units (tokens or sequences, knob
  ``unit``) of n whose early-exit prediction differs from the full-depth one.
- Null hypothesis H_λ: R(λ) > δ. Its p-value is the binomial tail
  ``p(λ) = P[Binom(n, δ) ≤ k]`` (``scipy.stats.binom.cdf``): the chance of seeing this few
  disagreements if the true rate were δ (for a rate above δ it is smaller still).
- Fixed-sequence testing: order the candidates from the most conservative (largest λ, fewest
  early exits) to the least, reject H_λ while ``p(λ) ≤ ε`` and stop at the first λ that is
  not rejected. This controls the family-wise error at ε without a multiplicity correction,
  so every rejected λ is certified; the answer is the smallest rejected λ (None if even the
  first candidate is not certified: run the full depth).
The binomial tail assumes independent units. Examples are drawn independently, so
``unit="sequence"`` (a sequence disagrees if any scored token does) is exactly valid;
``unit="token"`` bounds the per-token rate but treats the tokens of one sequence as
independent, which they are not (an approximation, usually anti-conservative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from ponder.errors import ConfigError

UNITS = ("sequence", "token")


@dataclass
class Calibration:
    """threshold  the smallest certified λ, or None (no candidate certified: use full depth)
    tested     per tested candidate, in test order: (λ, risk k/n, p-value, rejected)
    n          units the risks are computed on
    """

    threshold: Optional[float]
    tested: list[tuple[float, float, float, bool]] = field(default_factory=list)
    n: int = 0


def binomial_p_value(k: int, n: int, delta: float) -> float:
    """P[Binom(n, δ) ≤ k]: the p-value of H: risk > δ after k disagreements in n units."""
    from scipy import stats  # lazily: this package is imported by every ``ponder`` command

    return float(stats.binom.cdf(k, n, delta))


def check_levels(delta: float, epsilon: float) -> None:
    for name, value in (("delta", delta), ("epsilon", epsilon)):
        if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
            raise ConfigError(f"calibration {name}={value!r} must lie in (0, 1)")


def fixed_sequence_test(candidates: Sequence[float], disagreements: Sequence[int], n: int, *,
                        delta: float, epsilon: float,
                        p_value: Callable[[int, int, float], float] | None = None) -> Calibration:
    """Learn-then-Test on counts: ``disagreements[i]`` of ``n`` units disagree at
    ``candidates[i]``. Tests from the largest λ down; returns the smallest certified λ.
    ``p_value(k, n, δ)`` defaults to the binomial tail."""
    check_levels(delta, epsilon)
    if len(candidates) == 0 or len(candidates) != len(disagreements):
        raise ConfigError("calibration needs one disagreement count per candidate (and at least one)")
    if n < 1:
        raise ConfigError("calibration needs at least one unit (token or sequence) to test on")
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i])
    result = Calibration(threshold=None, n=n)
    for i in order:
        k = int(disagreements[i])
        p = (p_value or binomial_p_value)(k, n, delta)
        rejected = p <= epsilon
        result.tested.append((float(candidates[i]), k / n, p, rejected))
        if not rejected:
            break
        result.threshold = float(candidates[i])
    return result


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """A :class:`~ponder.tasks.batching.Batch`, or a (tokens, mask[, targets]) tuple."""
    if hasattr(batch, "tokens"):
        return batch.tokens, batch.mask, getattr(batch, "targets", None)
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    raise ConfigError("calibration batches must be Batch objects or (tokens, mask[, targets]) tuples")


@torch.no_grad()
def calibrate_threshold(model: Any, batches: Iterable[Any], *, delta: float, epsilon: float,
                        candidates: Sequence[float], unit: str = "sequence") -> Calibration:
    """Pick the smallest threshold of ``model.policy`` whose early/full disagreement is ≤ δ
    with probability ≥ 1 − ε (Learn-then-Test, fixed-sequence testing, binomial tail).

    ``model.policy`` must expose ``threshold_override`` (``confidence``, ``dat``). The model
    runs in eval mode once at full depth (override = ∞) and once per candidate, on every
    batch; predictions are compared at scored tokens (real tokens if a batch has no targets).
    The policy's threshold is left as it was (set ``threshold=`` from the result yourself).
    """
    policy = getattr(model, "policy", None)
    if policy is None or not hasattr(policy, "threshold_override"):
        raise ConfigError(f"policy {getattr(policy, 'name', None)!r} has no threshold to calibrate "
                          "(calibrate 'confidence' or 'dat')")
    if unit not in UNITS:
        raise ConfigError(f"unknown calibration unit {unit!r}; units: {', '.join(UNITS)}")
    check_levels(delta, epsilon)
    candidates = [float(c) for c in candidates]
    if not candidates or any(math.isnan(c) for c in candidates):
        raise ConfigError("calibration needs at least one (non-NaN) candidate threshold")
    was_training, saved = model.training, policy.threshold_override
    counts = [0] * len(candidates)
    n = 0
    model.eval()
    try:
        for batch in batches:
            tokens, mask, targets = _unpack(batch)
            where = mask.bool() if targets is None else (targets != -100) & mask.bool()
            policy.threshold_override = math.inf
            full = model(tokens, mask).logits.argmax(-1)
            n += int(where.sum()) if unit == "token" else int(where.any(-1).sum())
            for i, lam in enumerate(candidates):
                policy.threshold_override = lam
                differ = (model(tokens, mask).logits.argmax(-1) != full) & where
                counts[i] += int(differ.sum()) if unit == "token" else int(differ.any(-1).sum())
    finally:
        policy.threshold_override = saved
        model.train(was_training)
    return fixed_sequence_test(candidates, counts, n, delta=delta, epsilon=epsilon)
