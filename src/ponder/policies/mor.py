"""Mixture-of-Recursions (Bae et al. 2025, arXiv:2507.10524) on the recurrent core: a router
decides, per token, how many recursions of the shared core it takes.

Why a policy and not a block router: a block router (``ponder.models.routers``) picks
per block which tokens enter, and a token it skips stays a candidate of the next block; its
decision never ends a token's computation and does not know the recursion index. MoR's
routing is *one-way* (a token leaves the recursion and never returns: "hierarchical
filtering") and recursion-specific (its own router, capacity and key/value rule per
recursion) — that is the engine's halting: the active set shrinks, frozen tokens keep their
state and their exit readout. The router's weight on the update goes through
``Decision.state`` (the state carried into the next step), its keys/values options through
``Policy.keys()`` and ``Decision.memory``.

Two routings, each a registered policy:

- ``mor_expert`` (expert choice): recursion 1 runs every token; before recursion r+1 a
  linear router of recursion r+1 scores the tokens that ran recursion r, and the top
  ``k_{r+1} = ⌈c_{r+1}·n⌉`` of each sequence (n its real tokens) continue, the others stop.
  Capacity schedule c_r: ``linear`` (N−r+1)/N, or ``geometric`` decay^(r−1). The update of
  recursion r is scaled by the router's ``α·σ(s)`` (the router on the gradient path):
  ``x_r = x_{r−1} + α·σ(s_r)·(core(x_{r−1}) − x_{r−1})``. Top-k over the sequence reads
  every position, so this policy is not causal (refused by a causal model).
- ``mor_token`` (token choice): before recursion 1 a router on the prelude output picks a
  depth d ∈ 1..N per token (argmax of a softmax over N); the token runs d recursions, each
  update scaled by the chosen depth's probability g. A Switch-style balancing loss
  ``balance · N · Σ_d f_d·P_d`` (f_d: fraction of tokens choosing d, P_d: mean probability
  of d) keeps depths in use. Causal (the decision for token t reads its own prelude state).

Key/value options (knob ``kv``): ``recursion`` — recursion-wise keys/values: at recursion r
attention runs among the tokens taking recursion r only (tokens that left are no keys);
``share_first`` — every token's keys/values source is its state before recursion 1 (the
prelude output; MoR's sharing of the first recursion's keys/values) at every recursion,
for the tokens that left too. With a step embedding the running tokens' source also gets
the current step's embedding added (the engine's rule for ``Decision.memory``), and with
``core > 1`` only the group's first block reads the shared source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ponder.models.routers._select import capacity_k, top_k_mask
from ponder.policies.base import Decision, Halting, Policy, View, knob
from ponder.policies.halting import masked_mean
from ponder.policies.registry import register

KV = ("recursion", "share_first")


def one_hot_steps(steps: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """steps [B, L] long (0 at pads) → [B, L, N] one-hot at the halting step (step 1 at pads)."""
    return F.one_hot((steps.clamp(min=1) - 1), n).to(dtype)


class _MoR(Policy):
    """What both routings share: the weighted update, the key/value options, the summary."""

    online = True
    kinds = ("recurrent",)
    objective = "final"
    any_depth = False   # one router (or one depth logit) per recursion

    def keys(self) -> str:
        return "active" if self.knobs.kv == "recursion" else "all"

    @staticmethod
    def scaled(view: View, weight: torch.Tensor) -> torch.Tensor:
        """The state after the step with the update of the tokens that ran scaled by
        ``weight`` [B, L]: prev + w·(h − prev) [B, L, D] (frozen tokens: unchanged)."""
        ran = view.active[..., None]
        return torch.where(ran, view.prev + weight[..., None] * (view.h - view.prev), view.h)

    def decide(self, memo: dict, view: View, state: torch.Tensor, halt: torch.Tensor) -> Decision:
        """Carry ``state`` on; ``halt`` [B, L] stop now."""
        memo["steps"] = memo["steps"] + view.active.long()
        if self.knobs.kv == "share_first":
            return Decision(halt=halt, state=state, memory=memo["first"], memory_frozen=True)
        return Decision(halt=halt, state=state)

    def summary(self, memo: dict, view: View, aux: torch.Tensor, stats: dict) -> Halting:
        steps = memo["steps"]
        dist = one_hot_steps(steps, view.max_steps, view.h.dtype)
        stats = dict(stats, mor_depth=masked_mean(steps.to(view.h.dtype), view.mask).detach())
        return Halting(halt_dist=dist, aux_loss=aux, halt_step=steps.clamp(min=1), stats=stats)


@dataclass(frozen=True)
class MoRExpertKnobs:
    schedule: str = knob("linear", choices=("linear", "geometric"),
                         help="capacity of recursion r: (N−r+1)/N of the tokens, or decay^(r−1)")
    decay: float = knob(0.5, 0.01, 1.0, "ratio of the geometric schedule")
    alpha: float = knob(1.0, 0.0, 10.0, "update scale: x + alpha·σ(s)·(core(x) − x)")
    kv: str = knob("recursion", choices=KV,
                   help="keys/values: the tokens of this recursion only, or shared from recursion 1")


@register
class MoRExpertChoice(_MoR):
    """Expert-choice recursion: per recursion the top-k of the tokens still running continue."""

    name = "mor_expert"
    causal = False   # top-k over the sequence reads every position
    paper = "Bae et al. 2025, Mixture-of-Recursions (arXiv:2507.10524), expert-choice routing"
    Knobs = MoRExpertKnobs

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.routers = nn.ModuleList(nn.Linear(d_model, 1) for _ in range(max_steps))

    def capacity(self, r: int, n_steps: int) -> float:
        """Fraction of the real tokens that take recursion r (1-based)."""
        if self.knobs.schedule == "linear":
            return (n_steps - r + 1) / n_steps
        return self.knobs.decay ** (r - 1)

    def weight(self, r: int, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] input of recursion r → its update scale [B, L] and router logit."""
        s = self.routers[r - 1](x).squeeze(-1)
        return self.knobs.alpha * torch.sigmoid(s), s

    def start(self, view: View) -> dict:
        w, _ = self.weight(1, view.h)   # recursion 1: every token (capacity 1)
        return {"w": w, "steps": torch.zeros_like(view.mask, dtype=torch.long), "first": view.h}

    def step(self, memo: dict, view: View) -> Decision:
        state = self.scaled(view, memo["w"])
        if view.n < view.max_steps:
            # who takes recursion n+1: the top-k of the tokens that ran recursion n
            r = view.n + 1
            memo["w"], s = self.weight(r, state)
            k = capacity_k(self.capacity(r, view.max_steps), view.mask.sum(1))
            keep = top_k_mask(s, view.active, torch.minimum(k, view.active.sum(1)))
            halt = view.active & ~keep
        else:
            halt = view.active
        return self.decide(memo, view, state, halt)

    def finish(self, memo: dict, view: View) -> Halting:
        return self.summary(memo, view, view.h.new_zeros(()), {})


@dataclass(frozen=True)
class MoRTokenKnobs:
    balance: float = knob(0.01, 0.0, 100.0, "weight of the balancing loss N·Σ_d f_d·P_d")
    kv: str = knob("recursion", choices=KV,
                   help="keys/values: the tokens of this recursion only, or shared from recursion 1")


@register
class MoRTokenChoice(_MoR):
    """Token-choice recursion: each token's depth is chosen up front by a router."""

    name = "mor_token"
    online = False
    causal = True
    paper = "Bae et al. 2025, Mixture-of-Recursions (arXiv:2507.10524), token-choice routing"
    Knobs = MoRTokenKnobs

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.router = nn.Linear(d_model, max_steps)

    def start(self, view: View) -> dict:
        probs = torch.softmax(self.router(view.h), -1)            # [B, L, N]
        depth = probs.argmax(-1) + 1                               # [B, L] in 1..N
        gate = probs.gather(-1, (depth - 1)[..., None]).squeeze(-1)
        N = probs.shape[-1]
        m = view.mask
        chosen = F.one_hot(depth - 1, N).to(probs.dtype)
        frac = (chosen * m[..., None]).sum((0, 1)) / m.sum().clamp(min=1)
        mean_p = (probs * m[..., None]).sum((0, 1)) / m.sum().clamp(min=1)
        balance = self.knobs.balance * N * (frac * mean_p).sum()
        return {"depth": depth, "gate": gate, "balance": balance,
                "steps": torch.zeros_like(m, dtype=torch.long), "first": view.h}

    def step(self, memo: dict, view: View) -> Decision:
        halt = view.active & (memo["depth"] <= view.n)
        return self.decide(memo, view, self.scaled(view, memo["gate"]), halt)

    def finish(self, memo: dict, view: View) -> Halting:
        return self.summary(memo, view, memo["balance"], {})
