"""A bank of E two-layer experts and the sorted dispatch that runs them on a CPU.

Sorted dispatch: the (token, expert, gate) assignments are sorted by expert, the assigned
rows gathered once, each expert runs ONE matmul pair on its contiguous slice, and the gated
outputs are scattered back (``index_add``: a token with k experts sums its k outputs). No
dense ``[tokens, experts]`` masks, no expert evaluated on a token it was not assigned.

Why a Python loop over experts and not ``torch.nn.functional.grouped_mm`` (torch 2.13, CPU,
measured on the shared 2-core machine, ``ponder bench --part experts`` prints the ratio
again): its forward was 0.8–1.0× the loop's time in float32 (no gain worth a second path),
it refuses float64 (the reference tests run in float64) and its backward raised
``Invalid strides/sizes`` on CPU — so the loop is the one path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ExpertBank(nn.Module):
    """E experts ``e(x) = gelu(x W1[e] + b1[e]) W2[e] + b2[e]`` of width H.

    w1 [E, D, H], b1 [E, H], w2 [E, H, D], b2 [E, D]; initialised as E ``nn.Linear`` pairs
    (uniform ±1/√fan_in), so one expert starts like the ``dense`` FFN of width H.
    """

    def __init__(self, *, n_experts: int, d_model: int, d_expert: int) -> None:
        super().__init__()
        E, D, H = n_experts, d_model, d_expert
        self.n_experts, self.d_model, self.d_expert = E, D, H
        a, b = 1.0 / math.sqrt(D), 1.0 / math.sqrt(H)
        self.w1 = nn.Parameter(torch.empty(E, D, H).uniform_(-a, a))
        self.b1 = nn.Parameter(torch.empty(E, H).uniform_(-a, a))
        self.w2 = nn.Parameter(torch.empty(E, H, D).uniform_(-b, b))
        self.b2 = nn.Parameter(torch.empty(E, D).uniform_(-b, b))

    def flops_per_token(self) -> float:
        """Forward FLOPs of one expert on one row."""
        return 4.0 * self.d_model * self.d_expert

    def dispatch(self, x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor,
                 gate: torch.Tensor) -> torch.Tensor:
        """Sorted dispatch.

        x [R, D]; token [A] long (rows of x), expert [A] long, gate [A] float: the A
        assignments → y [R, D], ``y[r] = Σ_{a: token_a = r} gate_a · e_{expert_a}(x[r])``
        (0 at rows without an assignment).
        """
        out = x.new_zeros(x.shape)
        if token.numel() == 0:
            return out
        order = torch.argsort(expert, stable=True)
        tok = token.index_select(0, order)
        counts = torch.bincount(expert, minlength=self.n_experts).tolist()
        xs = x.index_select(0, tok)
        outs = []
        start = 0
        for e, n in enumerate(counts):
            if n:
                h = F.gelu(torch.addmm(self.b1[e], xs[start:start + n], self.w1[e]))
                outs.append(torch.addmm(self.b2[e], h, self.w2[e]))
            start += n
        ys = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out.index_add(0, tok, ys * gate.index_select(0, order)[:, None].to(ys.dtype))

    def batched(self, xs: torch.Tensor) -> torch.Tensor:
        """Every expert on its own rows: xs [E, S, D] → [E, S, D] (Soft MoE's slots)."""
        h = F.gelu(torch.baddbmm(self.b1[:, None], xs, self.w1))
        return torch.baddbmm(self.b2[:, None], h, self.w2)
