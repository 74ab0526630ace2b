"""``sharcs``: dynamic-width FFN, a router picks per token how much of the FFN width runs.

After SHARCS (Salehi et al. 2023, *SHARCS: Efficient Transformers through Routing with
Dynamic Width Sub-networks*, arXiv:2310.12126), at the level of tokens: the FFN's hidden
units are ordered, and width level k (k = 1..K) runs the first ``w_k = ⌊k·d_ff / K⌋`` of
them, so the K sub-networks are nested::

    f_k(x) = down[:, :w_k] gelu(up[:w_k] x + a[:w_k]) + e

A linear router gives each token a distribution p(k | x) = softmax(r(x)).

Training (``module.training``): the mixture ``Σ_k p_k f_k(x)``. The sub-networks are nested,
so it is one full-width pass with hidden unit j scaled by P(level ≥ level of j) (cheap, and
differentiable in the router). Two penalties: ``cost`` × the expected width fraction
``Σ_k p_k w_k / d_ff`` (what makes narrow levels worth choosing) and ``harden`` × the entropy
of p (so the soft mixture approaches the hard pick of inference).

Inference: each token runs ``f_k`` of its most likely level only; the rows are grouped by
level and each group runs one matmul pair on the weights' first w_k units. FLOPs per token
are true per token: the router's ``2·D·K`` is the static part (``flops_per_token``) and
``4·D·w_k`` is counted per row through ``ctx.count_row_flops``.

The original trains its router from labels (the narrowest sub-network that still predicts a
sample right) and routes whole samples; here the router is trained end to end with the
penalties above, per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.models.kinds import FFNS
from ponder.models.layers import FFN, AttnContext
from ponder.tasks.base import knob


@dataclass(frozen=True)
class SharcsKnobs:
    levels: int = knob(4, lo=2, hi=64, help="width levels K: level k runs the first k/K of d_ff")
    cost: float = knob(0.01, lo=0.0, hi=100.0, help="weight of the expected width fraction (compute penalty)")
    harden: float = knob(0.01, lo=0.0, hi=100.0, help="weight of the router's entropy (train/inference gap)")


@FFNS.register
class DynamicWidthFFN(FFN):
    """Dynamic-width FFN (``sharcs``): per token, the first w_k hidden units of the FFN.

    forward(x [R, D], ctx, rows) → [R, D]
    """

    name = "sharcs"
    paper = "Salehi et al. 2023, SHARCS: Efficient Transformers through Routing with Dynamic Width Sub-networks"
    Knobs = SharcsKnobs

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        k = knobs or SharcsKnobs()
        if d_ff < k.levels:
            raise ConfigError(f"ffn kind 'sharcs': d_ff={d_ff} is smaller than levels={k.levels}")
        self.d_model, self.d_ff, self.levels, self.cost, self.harden = d_model, d_ff, k.levels, k.cost, k.harden
        widths = [d_ff * (i + 1) // k.levels for i in range(k.levels)]
        self.widths = widths
        # level of hidden unit j: the first k with j < w_k
        seg = torch.searchsorted(torch.tensor(widths), torch.arange(d_ff), right=True)
        self.register_buffer("unit_level", seg, persistent=False)
        self.router = nn.Linear(d_model, k.levels)
        bound_in, bound_ff = 1.0 / math.sqrt(d_model), 1.0 / math.sqrt(d_ff)
        self.up = nn.Parameter(torch.empty(d_ff, d_model).uniform_(-bound_in, bound_in))
        self.up_b = nn.Parameter(torch.empty(d_ff).uniform_(-bound_in, bound_in))
        # stored [d_ff, D] (down's transpose) so that a level's first w_k units are contiguous
        self.down_t = nn.Parameter(torch.empty(d_ff, d_model).uniform_(-bound_ff, bound_ff))
        self.down_b = nn.Parameter(torch.empty(d_model).uniform_(-bound_ff, bound_ff))
        self.drop = nn.Dropout(dropout)

    def _soft(self, x: torch.Tensor, ctx: Optional[AttnContext],
              rows: Optional[torch.Tensor]) -> torch.Tensor:
        logp = torch.log_softmax(self.router(x), dim=-1)
        p = logp.exp()
        # P(level ≥ k): the weight of every hidden unit that level k and wider levels run
        tail = p.flip(-1).cumsum(-1).flip(-1)                        # [R, K]
        h = F.gelu(F.linear(x, self.up, self.up_b)) * tail[:, self.unit_level]
        out = h @ self.down_t + self.down_b
        if ctx is not None:
            w = ctx.row_weight(rows, x.shape[0], x.dtype)
            n = w.sum().clamp(min=1)
            frac = torch.tensor(self.widths, dtype=x.dtype, device=x.device) / self.d_ff
            width = (p @ frac * w).sum() / n
            entropy = (-(p * logp).sum(-1) * w).sum() / n
            if self.cost > 0:
                ctx.add_aux("sharcs_width", self.cost * width)
            if self.harden > 0:
                ctx.add_aux("sharcs_entropy", self.harden * entropy)
            ctx.add_stat("sharcs_width", width.detach())
        return out

    def _hard(self, x: torch.Tensor, ctx: Optional[AttnContext],
              rows: Optional[torch.Tensor]) -> torch.Tensor:
        level = self.router(x).argmax(-1)
        order = torch.argsort(level, stable=True)
        counts = torch.bincount(level, minlength=self.levels).tolist()
        xs = x.index_select(0, order)
        parts, start = [], 0
        for k, n in enumerate(counts):
            if n:
                w = self.widths[k]
                h = F.gelu(F.linear(xs[start:start + n], self.up[:w], self.up_b[:w]))
                parts.append(torch.addmm(self.down_b, h, self.down_t[:w]))
                start += n
        out = torch.cat(parts) if parts else x.new_zeros(0, x.shape[1])
        out = torch.zeros_like(x).index_copy(0, order, out)
        if ctx is not None:
            units = torch.tensor(self.widths, dtype=torch.float64, device=x.device)[level]  # [R]
            ctx.count_row_flops(rows, 4.0 * self.d_model * units)
            wt = ctx.row_weight(rows, x.shape[0], torch.float64)
            ctx.add_stat("sharcs_width", float((units * wt).sum() / wt.sum().clamp(min=1) / self.d_ff))
        return out

    def forward(self, x: torch.Tensor, ctx: Optional[AttnContext] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] (normed) → [R, D]."""
        out = self._soft(x, ctx, rows) if self.training else self._hard(x, ctx, rows)
        return self.drop(out)

    def flops_per_token(self) -> float:
        router = 2.0 * self.d_model * self.levels
        if self.training:  # the soft mixture runs the full width for every token
            return router + 4.0 * self.d_model * self.d_ff
        return router  # + 4·D·w_k per row, counted in forward (ctx.count_row_flops)
