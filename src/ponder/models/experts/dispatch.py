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

    def outputs(self, x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """x [R, D]; token [A] long (rows of x), expert [A] long → [A, D], row a =
        ``e_{expert_a}(x[token_a])``: sorted by expert, one matmul pair per expert on its
        contiguous rows, put back in assignment order (a gather: cheaper than a scatter)."""
        A = token.numel()
        if A == 0:
            return x.new_zeros(0, x.shape[1])
        order = torch.argsort(expert, stable=True)
        counts = torch.bincount(expert, minlength=self.n_experts).tolist()
        xs = x.index_select(0, token.index_select(0, order))
        # unbind / split, not w1[e] / xs[a:b]: their backward is one stack / cat, where
        # indexing's backward fills a zero tensor of the whole bank per expert
        w1, b1, w2, b2 = self.w1.unbind(0), self.b1.unbind(0), self.w2.unbind(0), self.b2.unbind(0)
        outs = []
        for e, part in enumerate(xs.split(counts)):
            if part.shape[0]:
                h = F.gelu(torch.addmm(b1[e], part, w1[e]))
                outs.append(torch.addmm(b2[e], h, w2[e]))
        ys = torch.cat(outs) if len(outs) > 1 else outs[0]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(A, device=order.device)
        return ys.index_select(0, inverse)

    def combine(self, x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor,
                gate: torch.Tensor, k: int) -> torch.Tensor:
        """Complete choice-major pairs (token = the n rows repeated k times, A = k·n) →
        [n, D], row i = ``Σ_j gate_{j·n+i} · e_{expert_{j·n+i}}(x[token_i])``."""
        n, D = token.numel() // k, x.shape[1]
        if torch.is_grad_enabled() and (x.requires_grad or gate.requires_grad or self.w1.requires_grad):
            ys = self.outputs(x, token, expert)
            return (ys.view(k, n, D) * gate.view(k, n, 1).to(ys.dtype)).sum(0)
        # inference: write each expert's gated output into one sorted buffer (no cat, no
        # [A, D] product), then gather the k choices of each row from it
        order = torch.argsort(expert, stable=True)
        counts = torch.bincount(expert, minlength=self.n_experts).tolist()
        xs = x.index_select(0, token.index_select(0, order))
        g = gate.index_select(0, order).to(x.dtype)[:, None]
        ys = torch.empty_like(xs)
        start = 0
        for e, m in enumerate(counts):
            if m:
                h = F.gelu(torch.addmm(self.b1[e], xs[start:start + m], self.w1[e]))
                part = ys[start:start + m]
                torch.addmm(self.b2[e], h, self.w2[e], out=part)
                part.mul_(g[start:start + m])
            start += m
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        out = ys.index_select(0, inverse[:n])
        for j in range(1, k):
            out += ys.index_select(0, inverse[j * n:(j + 1) * n])
        return out

    def dispatch(self, x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor,
                 gate: torch.Tensor) -> torch.Tensor:
        """Sorted dispatch, scattered back.

        x [R, D]; token [A] long (rows of x), expert [A] long, gate [A] float: the A
        assignments → y [R, D], ``y[r] = Σ_{a: token_a = r} gate_a · e_{expert_a}(x[r])``
        (0 at rows without an assignment).
        """
        ys = self.outputs(x, token, expert)
        return x.new_zeros(x.shape).index_add(0, token, ys * gate[:, None].to(ys.dtype))

    def batched(self, xs: torch.Tensor) -> torch.Tensor:
        """Every expert on its own rows: xs [E, S, D] → [E, S, D] (Soft MoE's slots)."""
        h = F.gelu(torch.baddbmm(self.b1[:, None], xs, self.w1))
        return torch.baddbmm(self.b2[:, None], h, self.w2)
