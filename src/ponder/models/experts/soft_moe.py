"""``soft_moe``: Soft MoE (Puigcerver et al. 2024). NOT causal.

Per sequence, over its rows entering the block (n_b of them):

    logits = s · normalise(x) normalise(Φ)   [n_b, E·S]  (S slots per expert, s a learned scale)
    D = softmax over the tokens (per slot)   slots x̃ = Dᵀ x  [E·S, D]
    ỹ = expert_e(x̃) for the S slots of each expert e
    C = softmax over the slots (per token)   y = C ỹ

Every slot mixes every position of the sequence, so a causal model refuses it. FLOPs per
token: 6·D·E·S (logits, dispatch, combine) plus its share E·S/n_b of the slots' experts
(nominal ``flops_per_token``: one expert; ``ctx.count_row_flops`` adds the difference).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.models.experts.dispatch import ExpertBank
from ponder.models.experts.routing import count_row_flops, entering, grid_shape
from ponder.models.kinds import FFNS
from ponder.models.layers import FFN, AttnContext
from ponder.tasks.base import knob


@dataclasses.dataclass(frozen=True)
class SoftMoEKnobs:
    n_experts: int = knob(8, lo=1, hi=256, help="experts")
    slots: int = knob(1, lo=1, hi=256, help="slots per expert")
    d_expert: int = knob(0, lo=0, hi=65536, help="hidden width of an expert (0: d_ff)")


@FFNS.register
class SoftMoE(FFN):
    """Slots as softmax mixtures of a sequence's tokens; tokens as mixtures of slot outputs."""

    name = "soft_moe"
    causal = False
    paper = "Puigcerver et al. 2024, From Sparse to Soft Mixtures of Experts"
    Knobs = SoftMoEKnobs

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        self.knobs = knobs if knobs is not None else SoftMoEKnobs()
        E, S = self.knobs.n_experts, self.knobs.slots
        self.n_experts, self.n_slots, self.d_model = E, S, d_model
        self.experts = ExpertBank(n_experts=E, d_model=d_model, d_expert=self.knobs.d_expert or d_ff)
        self.phi = nn.Parameter(torch.randn(d_model, E * S) / d_model ** 0.5)
        self.scale = nn.Parameter(torch.ones(()))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: Optional[AttnContext] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] → [R, D] (0 at rows that do not enter)."""
        R, D = x.shape
        E, S = self.n_experts, self.n_slots
        idx = entering(ctx, rows, x).nonzero().view(-1)
        B, L = grid_shape(ctx, R, rows)
        flat = idx if rows is None else rows.index_select(0, idx)
        seq, pos = torch.div(flat, L, rounding_mode="floor"), flat % L
        xs = x.index_select(0, idx)
        xg = x.new_zeros(B, L, D).index_put((seq, pos), xs)                      # [B, L, D]
        here = torch.zeros(B, L, dtype=torch.bool, device=x.device).index_put((seq, pos),
                                                                              torch.ones_like(seq, dtype=torch.bool))
        logits = self.scale * (F.normalize(xg, dim=-1) @ F.normalize(self.phi, dim=0))  # [B, L, E·S]
        dispatch = torch.softmax(logits.masked_fill(~here[..., None], torch.finfo(x.dtype).min), dim=1)
        slots = dispatch.transpose(1, 2) @ xg                                   # [B, E·S, D]
        per_expert = slots.view(B, E, S, D).transpose(0, 1).reshape(E, B * S, D)
        ys = self.experts.batched(per_expert).view(E, B, S, D).transpose(0, 1).reshape(B, E * S, D)
        yg = torch.softmax(logits, -1) @ ys                                      # [B, L, D]
        if ctx is not None and idx.numel():
            n_b = torch.bincount(seq, minlength=B).double()
            share = E * S * self.experts.flops_per_token() / n_b.index_select(0, seq)
            per_row = torch.zeros(R, dtype=torch.float64, device=x.device)
            per_row[idx] = share - self.experts.flops_per_token()
            count_row_flops(ctx, rows, per_row)
        out = x.new_zeros(R, D).index_copy(0, idx, yg[seq, pos])
        return self.drop(out)

    def flops_per_token(self) -> float:
        D, ES = self.d_model, self.n_experts * self.n_slots
        return 6.0 * D * ES + self.experts.flops_per_token()
