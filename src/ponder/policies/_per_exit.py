"""What the early-exit policies (LAC, CALM, PaBEE, DAT) share: a per-token exit rule tracked
across the steps, and the per-exit objective.

Every exit n = 1..N is a classifier (the per-step readout through the shared coda + head).
Training uses a weighted sum of the per-exit losses, so every exit must be computed:
in training no token halts (all run N steps) and ``halt_step`` records where the exit rule
*would* have stopped the token; in eval the rule freezes the token at that step (the engine
copies its exit state forward, so later tokens still attend to it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ponder.policies.base import Decision, Halting, Policy, View
from ponder.policies.halting import masked_mean, scored_mask, step_ce, token_ce

EXIT_WEIGHTINGS = ("linear", "uniform")


def exit_weights(n_steps: int, weighting: str, *, dtype: torch.dtype = torch.float32,
                 device: Any = None) -> torch.Tensor:
    """Normalised weights of the per-exit losses → [N]: ``linear`` w_n ∝ n (CALM, PaBEE: deeper
    exits matter more, the final one most), ``uniform`` w_n = 1/N (DAT's aligned training)."""
    if weighting == "linear":
        w = torch.arange(1, n_steps + 1, dtype=dtype, device=device)
    elif weighting == "uniform":
        w = torch.ones(n_steps, dtype=dtype, device=device)
    else:
        raise ValueError(f"unknown exit weighting {weighting!r}")
    return w / w.sum()


def per_exit_loss(step_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_n w_n · CE(y^n, target)`` per token, averaged over scored tokens.

    step_logits [B, L, N, V], targets [B, L], weights [N] (summing to 1) → scalar.
    """
    per_token = (step_ce(step_logits, targets) * weights).sum(-1)
    return masked_mean(per_token, scored_mask(targets))


def wide(x: torch.Tensor) -> torch.Tensor:
    """Detached, at least float32 (decisions from half-precision states are computed wider)."""
    return x.detach().to(torch.promote_types(x.dtype, torch.float32))


def one_hot_steps(halt_step: torch.Tensor, n_steps: int, dtype: torch.dtype) -> torch.Tensor:
    """halt_step [B, L] long in 1..N → the deterministic distribution [B, L, N]."""
    return F.one_hot(halt_step - 1, n_steps).to(dtype)


class PerExitPolicy(Policy):
    """Base of rule-based exits trained with weighted per-exit losses (``objective = "per_step"``).

    A subclass implements :meth:`fires` (``[B, L] bool``: the rule says "exit" after step
    ``view.n``); this class keeps, per token, the first step at which the rule fired
    (``halt_step``, N if never), returns halts only in eval, and reports the one-hot
    distribution at ``halt_step``. ``exit_weighting`` picks the per-exit loss weights.
    """

    online = True
    causal = True
    objective = "per_step"
    exit_weighting = "linear"

    # -- the rule --------------------------------------------------------------------------
    def fires(self, memo: dict, view: View) -> torch.Tensor:
        """[B, L] bool: the exit rule fires after step ``view.n`` (only its first firing counts)."""
        raise NotImplementedError

    # -- the protocol ----------------------------------------------------------------------
    def start(self, view: View) -> dict:
        B, L = view.mask.shape
        return {"done": torch.zeros_like(view.mask),
                "halt_step": torch.full((B, L), view.max_steps, dtype=torch.long, device=view.mask.device)}

    def step(self, memo: dict, view: View) -> Decision:
        fire = self.fires(memo, view).bool()
        new = fire & ~memo["done"]
        memo["halt_step"] = torch.where(new, view.n, memo["halt_step"])
        memo["done"] = memo["done"] | fire
        if view.n == view.max_steps:  # the engine forces this anyway; say so in the decision
            memo["done"] = torch.ones_like(memo["done"])
        if view.training:  # every exit's loss is needed: nobody halts, halt_step is recorded
            return Decision(halt=torch.zeros_like(view.mask))
        return Decision(halt=memo["done"])

    def finish(self, memo: dict, view: View) -> Halting:
        halt_step = memo["halt_step"]
        exited = (halt_step < view.max_steps).to(view.h.dtype)
        return Halting(halt_dist=one_hot_steps(halt_step, view.max_steps, view.h.dtype),
                       halt_step=halt_step, aux_loss=self.extra_loss(memo, view),
                       stats={"early_exit_rate": masked_mean(exited, view.mask)})

    def extra_loss(self, memo: dict, view: View) -> torch.Tensor | None:
        """An extra (already weighted) loss of this forward, e.g. an exit classifier's BCE."""
        return None

    # -- the objective ---------------------------------------------------------------------
    def loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted per-exit losses when the per-step readouts exist (training); otherwise
        (eval, no ``step_logits``) the cross-entropy of the exit readout."""
        if out.step_logits is None:
            return masked_mean(token_ce(out.logits, targets), scored_mask(targets)), {}
        w = exit_weights(out.step_logits.shape[2], self.exit_weighting, device=out.step_logits.device)
        return per_exit_loss(out.step_logits, targets, w), {}
