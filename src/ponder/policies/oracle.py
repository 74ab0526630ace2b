"""oracle: a halting decider trained with BCE against oracle labels — the supervised upper bound.

After step n a decider reads the token's state: ``z^n = w·h^n + b`` (``detach``: from the
detached state, so its loss trains the decider only). Inference: the token exits at the
first n with ``σ(z^n) ≥ threshold`` (N if never). The oracle exit step ``n*`` per scored
token comes from (knob ``label``):

- ``complexity``: the task's exact per-token complexity c (the batch's ``complexity``, which
  the trainer hands to the loss as ``out.extras["complexity"]``):
  ``n* = clamp(offset + ⌈scale·c⌉, 1, N)``;
- ``mispredict``: "the model still mispredicts this token": n* = the first step whose
  readout predicts the target (N if none; from the same forward's detached readouts).

Training (every token runs N steps, as for every early exit):
    loss = Σ_n w_n·CE(y^n)  +  γ · mean_{t scored, n < N} BCE(z^n_t, 1[n ≥ n*_t])
i.e. the per-exit losses (so each exit is usable; w uniform or ∝ n) plus the decider's
BCE on "halt from step n* on". Step N is forced, so it has no label. This is what the
unsupervised policies (ANIRA, PonderNet) are read against: how well a decider that *is
told* the complexity allocates compute.

Causal: token t's decision reads only token t's state. Kinds: recurrent and stacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ponder.errors import ConfigError
from ponder.policies._per_exit import EXIT_WEIGHTINGS, PerExitPolicy, exit_weights, per_exit_loss, wide
from ponder.policies.base import Halting, View, knob
from ponder.policies.dat import oracle_steps
from ponder.policies.halting import halting_head, masked_mean, scored_mask, token_ce
from ponder.policies.registry import register

LABELS = ("mispredict", "complexity")


@dataclass(frozen=True)
class OracleKnobs:
    label: str = knob("mispredict", choices=LABELS,
                      help="oracle exit: first step predicting the target | from the task's complexity")
    scale: float = knob(1.0, 0.0, 1000.0, "label=complexity: n* = offset + ceil(scale·c)")
    offset: int = knob(1, -4096, 4096, "label=complexity: n* = offset + ceil(scale·c), clamped to 1..N")
    threshold: float = knob(0.5, 1e-3, 1.0, "inference: exit at the first n with σ(z^n) ≥ threshold")
    gamma: float = knob(1.0, 0.0, 100.0, "weight of the decider's BCE")
    weighting: str = knob("uniform", choices=EXIT_WEIGHTINGS, help="per-exit loss weights: uniform | linear (∝ n)")
    detach: bool = knob(True, help="the decider reads detached states (its BCE trains it only)")
    halt_bias: float = knob(-3.0, -100.0, 100.0, "initial bias of the decider (negative = start deep)")


def complexity_steps(complexity: torch.Tensor, *, scale: float, offset: int, max_steps: int) -> torch.Tensor:
    """complexity [B, L] (any int, negative at unscored positions) → n* [B, L] long in 1..N."""
    n = offset + torch.ceil(scale * complexity.double()).long()
    return n.clamp(1, max_steps)


def halt_labels(n_star: torch.Tensor, n_steps: int) -> torch.Tensor:
    """n* [B, L] → labels [B, L, n_steps] float: 1 from step n* on (the step index is 1-based)."""
    n = torch.arange(1, n_steps + 1, device=n_star.device)
    return (n >= n_star[..., None]).float()


@register
class Oracle(PerExitPolicy):
    name = "oracle"
    kinds = ("recurrent", "stacked")
    paper = ("Oracle-supervised halting (the upper bound of unsupervised alignment; cf. the oracle "
             "exits of Elbayad et al. 2020 and ANIRA, arXiv:2602.08864)")
    Knobs = OracleKnobs

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.exit_weighting = self.knobs.weighting
        self.head = halting_head(d_model, self.knobs.halt_bias)

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["z"] = []
        return memo

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        h = view.h.detach() if self.knobs.detach else view.h
        z = self.head(h).squeeze(-1)                          # [B, L]
        memo["z"].append(z)
        return torch.sigmoid(wide(z)).double() >= self.knobs.threshold

    def finish(self, memo: dict, view: View) -> Halting:
        halting = super().finish(memo, view)
        halting.carry["halt_logits"] = torch.stack(memo["z"], -1)   # [B, L, N]
        return halting

    # -- the objective -----------------------------------------------------------------------
    def oracle_exit(self, out: Any, targets: torch.Tensor) -> torch.Tensor:
        """n* [B, L] long in 1..N."""
        N = out.step_logits.shape[2]
        if self.knobs.label == "mispredict":
            return oracle_steps(out.step_logits, targets, "correct")
        complexity = out.extras.get("complexity")
        if complexity is None:
            raise ConfigError("policy 'oracle' with label=complexity needs the batch's complexity "
                              "(out.extras['complexity']; the trainer sets it)")
        return complexity_steps(complexity, scale=self.knobs.scale, offset=self.knobs.offset, max_steps=N)

    def decider_loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean BCE over scored tokens and steps 1..N−1, n* [B, L])."""
        z = out.extras["policy_carry"]["halt_logits"]
        n_star = self.oracle_exit(out, targets)
        N = z.shape[-1]
        scored = scored_mask(targets)
        if N < 2:
            return z.sum() * 0.0, n_star
        z = z[..., : N - 1]
        z = z.to(torch.promote_types(z.dtype, torch.float32))  # the BCE in at least float32
        labels = halt_labels(n_star, N)[..., : N - 1].to(z.dtype)
        bce = F.binary_cross_entropy_with_logits(z, labels, reduction="none")
        return masked_mean(bce.mean(-1), scored), n_star

    def loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-exit losses + γ·BCE of the decider (training); the exit readout's CE in eval."""
        if out.step_logits is None:
            return masked_mean(token_ce(out.logits, targets), scored_mask(targets)), {}
        w = exit_weights(out.step_logits.shape[2], self.knobs.weighting, device=out.step_logits.device)
        exits = per_exit_loss(out.step_logits, targets, w)
        bce, n_star = self.decider_loss(out, targets)
        scored = scored_mask(targets)
        stats = {"exit_loss": float(exits.detach()), "oracle_bce": float(bce.detach()),
                 "oracle_step": float(masked_mean(n_star.double(), scored))}
        return exits + self.knobs.gamma * bce, stats
