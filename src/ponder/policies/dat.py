"""dat: Depth-Adaptive Transformer — a halting classifier per layer, trained towards an oracle exit.

After layer n < N: χ^n = σ(w_n·h^n + b_n) (one classifier per layer, as in the paper), and
``q(n) = χ^n ∏_{m<n}(1 − χ^m)`` with χ^N = 1, so q sums to 1 over 1..N (log space).
Inference (knob ``rule``): ``chi`` exits at the first n with χ^n ≥ threshold, ``cumulative``
at the first n with Σ_{m≤n} q(m) ≥ threshold. Exited tokens are frozen and their exit state
is copied to the later layers (the engine's freezing), so later tokens still attend to them.

Training (every token runs all N layers):
    loss = Σ_n w_n·CE(y^n, target)  +  γ · mean_t [−log q_t(n*_t)]
with per-layer classifier losses (w uniform, or ∝ n) and the oracle exit n*_t (knob
``oracle``): ``correct`` = the first layer whose prediction is right (N if none; a token
without a target uses ``final``), ``final`` = the first layer whose prediction equals the
last layer's. The oracle comes from the detached per-layer predictions; the halting
classifiers read detached states (``detach``), so the oracle loss trains them only.

Kinds: made for stacked (non-shared) layers; it also makes sense for a recurrent core — the
halting classifier is then indexed by the step (like the step embedding), and the rule is
PonderNet-style conditional halting supervised by an oracle instead of an expected loss — so
both kinds are allowed. Causal: token t's exit uses only token t's states and readouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ponder.policies._per_exit import EXIT_WEIGHTINGS, PerExitPolicy, exit_weights, per_exit_loss
from ponder.policies.base import Halting, View, knob
from ponder.policies.halting import (THRESHOLD_TOL, conditional_log_step, masked_mean, scored_mask,
                                     token_ce)
from ponder.policies.registry import register

ORACLES = ("correct", "final")
RULES = ("chi", "cumulative")


@dataclass(frozen=True)
class DatKnobs:
    oracle: str = knob("correct", choices=ORACLES,
                       help="oracle exit: first layer that is right | first that matches the last layer")
    rule: str = knob("chi", choices=RULES, help="inference: first χ^n ≥ threshold | first Σ q ≥ threshold")
    threshold: float = knob(0.5, 1e-3, 1.0, "threshold of the inference rule")
    gamma: float = knob(1.0, 0.0, 100.0, "weight of the oracle cross-entropy −log q(n*)")
    weighting: str = knob("uniform", choices=EXIT_WEIGHTINGS, help="per-layer loss weights: uniform | linear (∝ n)")
    detach: bool = knob(True, help="halting classifiers read detached states (the oracle loss trains them only)")
    halt_bias: float = knob(-3.0, -100.0, 100.0, "initial bias of the halting classifiers (negative = start deep)")


def oracle_steps(step_logits: torch.Tensor, targets: torch.Tensor, oracle: str) -> torch.Tensor:
    """The oracle exit layer n* (1-based) per token: step_logits [B, L, N, V], targets [B, L]
    → [B, L] long. ``correct``: first layer predicting the target (N if none; unscored tokens
    fall back to ``final``). ``final``: first layer predicting what layer N predicts."""
    pred = step_logits.detach().argmax(-1)                       # [B, L, N]
    good = pred == pred[..., -1:]
    if oracle == "correct":
        scored = scored_mask(targets)[..., None]
        good = torch.where(scored, pred == targets[..., None], good)
    N = pred.shape[-1]
    first = good.float().argmax(-1)                              # first True (0 if none)
    return torch.where(good.any(-1), first, N - 1) + 1


def dat_log_dist(z: torch.Tensor) -> torch.Tensor:
    """Halting logits z [..., N−1] (layers 1..N−1) → log q [..., N] with χ^N = 1."""
    N = z.shape[-1] + 1
    log_survive = torch.zeros_like(z[..., 0]) if N > 1 else z.new_zeros(z.shape[:-1])
    out = []
    for n in range(N):
        zn = z[..., n] if n < N - 1 else log_survive  # ignored at the last layer
        log_q, log_survive = conditional_log_step(zn, log_survive, n == N - 1)
        out.append(log_q)
    return torch.stack(out, -1)


@register
class Dat(PerExitPolicy):
    name = "dat"
    any_depth = False  # one halting classifier per layer
    kinds = ("stacked", "recurrent")
    paper = "Elbayad, Gu, Grave, Auli 2020, Depth-Adaptive Transformer"
    Knobs = DatKnobs
    # Learn-then-Test may set this (not a knob): it replaces ``threshold``; math.inf = full depth
    threshold_override: Optional[float] = None

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.exit_weighting = self.knobs.weighting
        heads = max_steps - 1  # χ^N = 1: the last layer needs no classifier
        if heads > 0:
            bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default initialisation
            self.halt_weight = nn.Parameter(torch.empty(heads, d_model).uniform_(-bound, bound))
            self.halt_bias = nn.Parameter(torch.full((heads,), float(self.knobs.halt_bias)))

    @property
    def threshold(self) -> float:
        return self.knobs.threshold if self.threshold_override is None else self.threshold_override

    def start(self, view: View) -> dict:
        memo = super().start(view)
        zeros = torch.zeros_like(view.mask, dtype=view.h.dtype)
        memo.update(log_survive=zeros, cum=zeros, log_q=[])
        return memo

    def halting_logit(self, view: View) -> torch.Tensor:
        """z^n = w_n·h^n + b_n for layer n < N, [B, L]."""
        h = view.h.detach() if self.knobs.detach else view.h
        return h @ self.halt_weight[view.n - 1] + self.halt_bias[view.n - 1]

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        last = view.n == view.max_steps
        z = memo["log_survive"] if last else self.halting_logit(view)  # z unused at the last layer
        log_q, memo["log_survive"] = conditional_log_step(z, memo["log_survive"], last)
        memo["log_q"].append(log_q)
        memo["cum"] = memo["cum"] + log_q.exp()
        if last:
            return torch.ones_like(view.mask)
        if self.knobs.rule == "chi":
            return torch.sigmoid(z.detach().double()) >= self.threshold
        return memo["cum"].detach().double() >= self.threshold - THRESHOLD_TOL

    def finish(self, memo: dict, view: View) -> Halting:
        halting = super().finish(memo, view)
        log_q = torch.stack(memo["log_q"], -1)
        halting.halt_dist = log_q.exp()
        # ``loss`` needs log q for −log q(n*); the interface passes it only halt_dist (= exp of it,
        # which underflows for very unlikely steps), so log q rides on that very tensor
        halting.halt_dist._dat_log_q = log_q
        return halting

    def oracle_loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean over real tokens of −log q(n*), n* [B, L])."""
        n_star = oracle_steps(out.step_logits, targets, self.knobs.oracle)
        log_q = getattr(out.halt_dist, "_dat_log_q", None)
        if log_q is None:  # a halt_dist that lost it (copied, moved): log q from q, floored
            log_q = out.halt_dist.clamp_min(1e-30).log()
        nll = -log_q.gather(-1, (n_star - 1)[..., None]).squeeze(-1)
        real = out.mask if out.mask is not None else torch.ones_like(targets, dtype=torch.bool)
        return masked_mean(nll, real), n_star

    def loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-layer losses + γ·oracle cross-entropy (training); the exit readout's CE in eval."""
        if out.step_logits is None or out.halt_dist is None:
            return masked_mean(token_ce(out.logits, targets), scored_mask(targets)), {}
        w = exit_weights(out.step_logits.shape[2], self.knobs.weighting, device=out.step_logits.device)
        layers = per_exit_loss(out.step_logits, targets, w)
        exit_ce, n_star = self.oracle_loss(out, targets)
        real = out.mask if out.mask is not None else torch.ones_like(targets, dtype=torch.bool)
        stats = {"layer_loss": float(layers.detach()), "oracle_ce": float(exit_ce.detach()),
                 "oracle_step": float(masked_mean(n_star.float(), real))}
        return layers + self.knobs.gamma * exit_ce, stats
