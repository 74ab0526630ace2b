"""q_halt / q_halt_sample: Q-learning halting of the HRM/TRM reasoners, per token and per sample.

After step n a Q-head reads the state: ``(q̂_halt^n, q̂_cont^n) = W·s^n + b`` (zero weights; the
biases start at (``halt_bias``, −5), i.e. both −5 by default, as the published code; a larger
``halt_bias`` starts shallow), with ``s^n`` the RMS-normalised (no parameters) state of the token
(``q_halt``) or the masked mean of the example's real states (``q_halt_sample``: one decision
per example, the published form; every token of the example halts together, and the
per-token decisions ``[B, L]`` are that decision broadcast). The unit halts at the first n with

- ``q̂_halt^n > q̂_cont^n`` (``continue_target = true``, HRM), or
- ``q̂_halt^n > 0`` (``continue_target = false``, TRM's ``no_ACT_continue``),

forced at N. **Exploration** (training only): with probability ``explore`` a unit draws a
minimum step ``m ~ U{min_explore, …, N}`` and cannot halt before it (HRM/TRM: 0.1,
``randint(2, N + 1)``); the draws come from torch's global generator, which the trainer
seeds and checkpoints.

Training. Every step n is a supervised *segment* (deep supervision): every token runs all N
steps (the later readouts are needed for the targets) and ``halt_step`` h records where the
rule stopped the unit. With ``ran = {(unit, n): n ≤ h}``:

    task = Σ_{t scored, n ≤ h_t} CE(y_t^n) / Σ_{t scored} h_t       (each segment weighs 1)
    q    = q_weight · [ mean_ran BCE(q̂_halt^n, correct^n)
                        + mean_{ran, n<N} BCE(q̂_cont^n, σ(target^n)) ]    (the second only with continue_target)

``correct^n``: the token's step-n prediction equals its target (per sample: every scored
token of the example is right — HRM's ``seq_is_correct``). The bootstrapped continue target
(PQN-style, no replay buffer) is ``target^n = max(q̂_halt^{n+1}, q̂_cont^{n+1})``, or
``q̂_halt^{n+1}`` when n + 1 = N (the next step can only halt), detached. Units without a
scored token have no label.

Inference. ``eval_halting = true`` freezes the unit at its halting step; ``false`` runs every
token N steps, which is what the published code does at evaluation ("to guarantee the same
halting steps inside a batch") — the switch exists because that throws the saving away.

Causal: ``q_halt`` yes (token t's own state); ``q_halt_sample`` no (the mean over the example).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.policies._per_exit import PerExitPolicy
from ponder.policies.base import Halting, View, knob
from ponder.policies.halting import masked_mean, scored_mask, step_ce, token_ce
from ponder.policies.registry import register

HRM = ("Wang et al. 2025, Hierarchical Reasoning Model (arXiv:2506.21734); Jolicoeur-Martineau 2025, "
       "Less is More: Recursive Reasoning with Tiny Networks (TRM, arXiv:2510.04871)")
POOLS = ("first", "mean")
CONT_BIAS = -5.0  # the published initial bias of both Q outputs


def rms(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMS normalisation over the last dim. The published Q-head reads a
    post-norm state; the workbench's state is the pre-norm residual stream, whose scale grows
    with the steps, so the head reads it normalised."""
    return F.rms_norm(x, (x.shape[-1],), eps=1e-6)


@dataclass(frozen=True)
class QHaltKnobs:
    explore: float = knob(0.1, 0.0, 1.0, "training: probability that a unit draws a minimum step")
    min_explore: int = knob(2, 1, 4096, "the minimum step is drawn uniformly from min_explore..N")
    continue_target: bool = knob(True, help="HRM: halt when q_halt > q_cont, bootstrapped continue target; "
                                            "false = TRM: halt when q_halt > 0, no continue loss")
    q_weight: float = knob(0.5, 0.0, 100.0, "weight of the Q losses")
    eval_halting: bool = knob(True, help="halt at inference too (false = the published form: run N steps)")
    halt_bias: float = knob(-5.0, -100.0, 100.0, "initial bias of q_halt (q_cont starts at −5, as published)")
    pool: str = knob("first", choices=POOLS, help="q_halt_sample: the example's state is position 0 "
                                                  "(first, as published) | the mean of its real positions")


class QHalting(PerExitPolicy):
    """Shared machinery; a subclass says whether a unit is a token or an example."""

    per_sample: ClassVar[bool] = False
    kinds = ("recurrent", "stacked")
    paper = HRM
    Knobs = QHaltKnobs

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.q_head = nn.Linear(d_model, 2)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.copy_(torch.tensor([self.knobs.halt_bias, CONT_BIAS]))

    def check_knobs(self) -> None:
        if self.knobs.min_explore > self.max_steps:
            raise ConfigError(f"{self.name}: min_explore={self.knobs.min_explore} exceeds max_steps={self.max_steps}")

    # -- the rule --------------------------------------------------------------------------
    def q_values(self, view: View) -> torch.Tensor:
        """[B, L, 2] (q̂_halt, q̂_cont) after step ``view.n``; per sample, the example's values
        broadcast over its positions."""
        if not self.per_sample:
            return self.q_head(rms(view.h))
        if self.knobs.pool == "first":  # HRM/TRM read position 0
            pooled = view.h[:, 0]                                   # [B, D]
        else:
            m = view.mask.to(view.h.dtype)[..., None]
            pooled = (view.h * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, D]
        return self.q_head(rms(pooled))[:, None, :].expand(-1, view.mask.shape[1], -1)

    def _start(self, view: View) -> dict:
        memo = super().start(view)
        memo["q"] = []
        B, L = view.mask.shape
        floor = torch.ones(B, L, dtype=torch.long, device=view.mask.device)
        k = self.knobs
        if view.training and k.explore > 0:
            shape = (B, 1) if self.per_sample else (B, L)
            draw = torch.rand(shape, device=view.mask.device) < k.explore
            low = torch.randint(k.min_explore, view.max_steps + 1, shape, device=view.mask.device)
            floor = torch.where(draw, low, 1).expand(B, L)
        memo["floor"] = floor
        return memo

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        q = self.q_values(view)
        memo["q"].append(q)
        if not view.training and not self.knobs.eval_halting:
            return torch.zeros_like(view.mask)
        qd = q.detach()
        wants = qd[..., 0] > qd[..., 1] if self.knobs.continue_target else qd[..., 0] > 0
        if view.training:  # the explored segment count: the first n ≥ the floor where it wants to halt
            new = wants & (view.n >= memo["floor"]) & (memo["segments"] == view.max_steps)
            memo["segments"] = torch.where(new & (view.n < view.max_steps), view.n, memo["segments"])
        return wants

    def start(self, view: View) -> dict:
        memo = self._start(view)
        memo["segments"] = torch.full_like(memo["halt_step"], view.max_steps)
        return memo

    def finish(self, memo: dict, view: View) -> Halting:
        halting = super().finish(memo, view)
        halting.carry["q"] = torch.stack(memo["q"], 2)    # [B, L, N, 2]
        # ``halt_step`` is the greedy rule (what inference does); the loss supervises the segments
        # the explored rule ran (equal to it when the unit did not explore)
        halting.carry["segments"] = memo["segments"]
        return halting

    # -- the objective -----------------------------------------------------------------------
    def units(self, q: torch.Tensor, correct: torch.Tensor, scored: torch.Tensor,
              halt_step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per unit: (q [U, N, 2], label [U, N], has a label [U], halt step [U])."""
        if not self.per_sample:
            return q.flatten(0, 1), correct.flatten(0, 1), scored.flatten(), halt_step.flatten()
        seq_correct = (correct | ~scored[..., None]).all(1)    # [B, N]
        return q[:, 0], seq_correct, scored.any(1), halt_step[:, 0]

    def loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        scored = scored_mask(targets)
        if out.step_logits is None:  # eval: the exit readout's CE
            return masked_mean(token_ce(out.logits, targets), scored), {}
        N = out.step_logits.shape[2]
        n = torch.arange(1, N + 1, device=targets.device)
        h = out.extras["policy_carry"]["segments"]                 # [B, L]
        ran_tok = (n <= h[..., None]) & scored[..., None]          # [B, L, N]
        ce = step_ce(out.step_logits, targets)
        task = (ce * ran_tok).sum() / ran_tok.sum().clamp_min(1)

        correct = out.step_logits.detach().argmax(-1) == targets[..., None]   # [B, L, N]
        q, label, valid, hu = self.units(out.extras["policy_carry"]["q"], correct, scored, h)
        q = q.to(torch.promote_types(q.dtype, torch.float32))
        ran = (n <= hu[:, None]) & valid[:, None]                 # [U, N]
        w = ran.to(q.dtype)
        bce_halt = F.binary_cross_entropy_with_logits(q[..., 0], label.to(q.dtype), reduction="none")
        q_loss = (bce_halt * w).sum() / w.sum().clamp_min(1)
        stats = {"q_halt_loss": float(q_loss.detach())}
        if self.knobs.continue_target and N > 1:
            nxt = q[:, 1:].detach()                               # [U, N−1, 2]
            best = torch.maximum(nxt[..., 0], nxt[..., 1])
            last = torch.zeros(N - 1, dtype=torch.bool, device=q.device)
            last[-1] = True                                       # the step after n = N−1 is N: halt only
            target = torch.sigmoid(torch.where(last, nxt[..., 0], best))
            bce_cont = F.binary_cross_entropy_with_logits(q[:, :-1, 1], target, reduction="none")
            wc = w[:, :-1]
            cont = (bce_cont * wc).sum() / wc.sum().clamp_min(1)
            stats["q_cont_loss"] = float(cont.detach())
            q_loss = q_loss + cont
        stats["prediction_loss"] = float(task.detach())
        return task + self.knobs.q_weight * q_loss, stats


@register
class QHalt(QHalting):
    name = "q_halt"
    causal = True
    per_sample = False


@register
class QHaltSample(QHalting):
    name = "q_halt_sample"
    causal = False
    per_sample = True
