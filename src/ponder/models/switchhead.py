"""``switchhead``: attention with mixture-of-experts value and output projections.

SwitchHead (Csordás et al. 2023, arXiv:2312.07987) as used by MoEUT (arXiv:2405.16039,
``moeut.py::SwitchHeadRope``). Queries and keys are ordinary per-head projections. Each head h
has E value experts and E output experts, chosen by sigmoid scores and top-k:

    source token j:       s_j = σ(S_v y_j) [H, E];  v_j^h = Σ_{e ∈ top-k(s_j^h)} s_j^{h,e} W_v^{h,e} y_j
    destination token i:  d_i = σ(S_o y_i) [H, E];  o_i   = Σ_h Σ_{e ∈ top-k(d_i^h)} d_i^{h,e} W_o^{h,e} a_i^h

where ``a_i^h`` is head h's attention output. The value experts are picked by the key token,
the output experts by the query token (``out_reads_input``: the block hands ``out_rows`` the
query rows' normed input). Dispatch: the (row, head, expert) assignments are sorted by
expert and each expert runs one matmul on its contiguous rows.

Regulariser (MoEUT's ``entropy_reg``, weight ``att_entropy_reg``): the negative entropy of
each head's *mean* output-expert distribution (softmax of the selection logits, averaged over
the rows that really enter the block), which maximises the entropy of average expert usage.
It is computed on the output selection only: the value selection happens in
``keys_values``, whose rows are keys (the compacted path caches frozen tokens' keys and values
and does not recompute them), so a mean over them would differ between execution modes.

Differences from MoEUT's module: in a pre-norm block (ponder's default) the values read the
normed input like queries and keys; with ``model.norm_layout=peri`` they read the raw
residual, as MoEUT's peri-layernorm (the selections still read the normed rows). No dropout
on the expert scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.models.kinds import ATTENTIONS
from ponder.models.layers import AttentionKind, AttnContext, apply_rotary
from ponder.tasks.base import knob


@dataclass(frozen=True)
class SwitchHeadKnobs:
    experts: int = knob(4, lo=1, hi=256, help="value and output experts per head")
    k: int = knob(2, lo=1, hi=256, help="experts each token uses per head (top-k of the sigmoid scores)")
    entropy_reg: float = knob(0.001, lo=0.0, hi=10.0,
                              help="weight of the negative entropy of the mean output-expert usage")


def expert_apply(inp: torch.Tensor, weight: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Each row through its own expert's map, dispatched sorted by expert: one matmul per
    expert on its contiguous rows (no per-row weight gather, no masks).

    inp [M, n], weight [G, n, m], expert [M] long in [0, G) → [M, m] (``inp[i] @ weight[expert[i]]``).
    """
    order = torch.argsort(expert, stable=True)
    counts = torch.bincount(expert, minlength=weight.shape[0]).tolist()
    src = inp.index_select(0, order)
    parts, start = [], 0
    for g, c in enumerate(counts):
        if c:
            parts.append(src[start:start + c] @ weight[g])
            start += c
    out = torch.cat(parts) if parts else inp.new_zeros(0, weight.shape[2])
    return inp.new_zeros(inp.shape[0], weight.shape[2]).index_copy(0, order, out)


def expert_mix(inp: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor,
               gate: torch.Tensor) -> torch.Tensor:
    """Per row and head, the gated sum of its chosen experts' maps.

    inp [R, H, n] (an expanded view is fine), weight [H, E, n, m], idx [R, H, k] long
    (expert per choice), gate [R, H, k] → [R, H, m]: ``Σ_j gate[r,h,j] · inp[r,h] @ weight[h, idx[r,h,j]]``.
    """
    R, H, K = idx.shape
    E, n, m = weight.shape[1], weight.shape[2], weight.shape[3]
    dev = inp.device
    head = torch.arange(H, device=dev).view(1, H, 1).expand(R, H, K).reshape(-1)
    row = torch.arange(R, device=dev).view(R, 1, 1).expand(R, H, K).reshape(-1)
    out = expert_apply(inp[row, head], weight.reshape(H * E, n, m), head * E + idx.reshape(-1))
    out = out * gate.reshape(-1, 1)
    return inp.new_zeros(R * H, m).index_add(0, row * H + head, out).view(R, H, m)


@ATTENTIONS.register
class SwitchHead(AttentionKind):
    """Multi-head attention with per-head MoE value and output projections (``switchhead``)."""

    name = "switchhead"
    paper = "Csordás et al. 2023, SwitchHead (arXiv:2312.07987); MoEUT (arXiv:2405.16039)"
    Knobs = SwitchHeadKnobs
    out_reads_input = True
    peri = True

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        kn = knobs or SwitchHeadKnobs()
        if d_model % n_heads:
            raise ConfigError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        if kn.k > kn.experts:
            raise ConfigError(f"attention kind 'switchhead': k={kn.k} exceeds experts={kn.experts}")
        H, hd, E = n_heads, d_model // n_heads, kn.experts
        self.n_heads, self.head_dim, self.dropout = H, hd, dropout
        self.n_experts, self.k, self.entropy_reg = E, kn.k, kn.entropy_reg
        self.q = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        bound = 1.0 / math.sqrt(d_model)
        self.v_experts = nn.Parameter(torch.empty(H, E, d_model, hd).uniform_(-bound, bound))
        self.o_experts = nn.Parameter(torch.empty(H, E, hd, d_model).uniform_(-bound, bound))
        self.v_sel = nn.Linear(d_model, H * E, bias=False)
        self.o_sel = nn.Linear(d_model, H * E, bias=False)

    def _choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [R, H·E] → (idx [R, H, k], gate [R, H, k]): top-k of the sigmoid scores."""
        s = torch.sigmoid(logits.view(-1, self.n_heads, self.n_experts))
        gate, idx = s.topk(self.k, dim=-1, sorted=False)
        return idx, gate

    def queries(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        q = self.q(y).view(-1, self.n_heads, self.head_dim)
        return q if rope is None else apply_rotary(q, rope[0][:, None], rope[1][:, None])

    def keys_values(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]],
                    x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y [R, D] normed rows → [R, 2·D]; the value experts read the raw rows x [R, D] when
        given (peri-layernorm; their selection still reads y, as MoEUT's ``k_src``)."""
        R, D = y.shape
        k = self.key(y).view(R, self.n_heads, self.head_dim)
        if rope is not None:
            k = apply_rotary(k, rope[0][:, None], rope[1][:, None])
        idx, gate = self._choose(self.v_sel(y))
        src = y if x is None else x
        v = expert_mix(src[:, None, :].expand(R, self.n_heads, D), self.v_experts, idx, gate)
        return torch.cat([k.reshape(R, D), v.reshape(R, D)], dim=1)

    def out(self, a: torch.Tensor) -> torch.Tensor:
        raise TypeError("switchhead's output experts are picked by the query token: call out_rows")

    def out_rows(self, a: torch.Tensor, y: Optional[torch.Tensor], ctx: AttnContext,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a [R, D] heads' outputs, y [R, D] the query rows' normed input → [R, D]."""
        R, D = a.shape
        logits = self.o_sel(y)
        idx, gate = self._choose(logits)
        o = expert_mix(a.view(R, self.n_heads, self.head_dim), self.o_experts, idx, gate)
        if self.training and self.entropy_reg > 0 and ctx is not None:
            w = ctx.row_weight(rows, R, a.dtype)
            p = torch.softmax(logits.view(R, self.n_heads, self.n_experts), -1)
            mean = (p * w[:, None, None]).sum(0) / w.sum().clamp(min=1)   # [H, E]
            neg_entropy = (mean * mean.clamp(min=1e-30).log()).sum(-1).mean()
            ctx.add_aux("switchhead_entropy", self.entropy_reg * neg_entropy)
        return o.sum(1)

    def flops_per_token(self, n_keys: torch.Tensor | float) -> torch.Tensor | float:
        D, H, E, k = self.n_heads * self.head_dim, self.n_heads, self.n_experts, self.k
        # Q, K; k value and k output experts per head (each hd×D); two selections; scores + sum
        return 4.0 * D * D + 4.0 * k * D * D + 4.0 * D * H * E + 4.0 * D * n_keys
