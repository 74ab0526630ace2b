"""``moa``: mixture of attention heads (Zhang et al. 2022, arXiv:2210.05144), SUT's attention.

E attention experts, each with its own query and output projection; one key and one value
projection shared by all (head dimension hd = d_model / n_heads). A router picks per token the
``n_heads`` experts it uses (top-k of a softmax over the E experts, renormalised over the k
chosen); each chosen expert is one head of that token:

    slot j of token i:  q_i^j = W_q^{e_j} y_i;   a_i^j = Σ_t softmax_t(q_i^j · k_t / √hd) v_t
    output:             o_i = Σ_j g_i^j W_o^{e_j} a_i^j             (k_t = W_k y_t, v_t = W_v y_t)

So the attention cost is that of ``n_heads`` heads, whatever E is, and the parameters grow
with E. The expert picks of a query token decide its queries and its output projection
(``out_reads_input``: the output side recomputes the same picks from the query rows' input).
The shared keys and values are handed to the dispatcher once per slot (the slots are its
heads). Query and output experts run sorted by expert, one matmul per expert.

SUT (Tan et al. 2023) trains this with a mutual-information loss (weight 0.1 in its WMT
config): knob ``mi`` adds ``−mi · MI(expert; token)`` of the router's softmax over the
entering query rows, pooled over every call of the module in a forward as SUT's code does
(``experts.routing.add_pooled_mi``: one term per module however many steps the core runs;
the sign SUT's paper describes
— its code's sign is questionable, reference/mechanisms_next.md §4).
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
from ponder.models.experts.routing import add_pooled_mi
from ponder.models.switchhead import expert_apply
from ponder.tasks.base import knob


@dataclass(frozen=True)
class MoAKnobs:
    experts: int = knob(8, lo=1, hi=1024, help="attention experts E (each token uses n_heads of them)")
    mi: float = knob(0.0, lo=0.0, hi=10.0, help="weight of SUT's mutual-information loss −MI(expert; token)")


@ATTENTIONS.register
class MixtureOfAttentionHeads(AttentionKind):
    """Mixture of attention heads (``moa``): per token, n_heads of E query/output experts over
    shared keys and values."""

    name = "moa"
    paper = "Zhang et al. 2022, Mixture of Attention Heads (arXiv:2210.05144); SUT (arXiv:2310.07096)"
    Knobs = MoAKnobs
    out_reads_input = True
    peri = True

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        kn = knobs or MoAKnobs()
        if d_model % n_heads:
            raise ConfigError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        if n_heads > kn.experts:
            raise ConfigError(f"attention kind 'moa': n_heads={n_heads} (experts per token) exceeds "
                              f"experts={kn.experts}")
        self.n_heads, self.head_dim, self.dropout, self.n_experts = n_heads, d_model // n_heads, dropout, kn.experts
        self.mi = kn.mi
        hd, E = self.head_dim, kn.experts
        self.router = nn.Linear(d_model, E, bias=False)
        self.k = nn.Linear(d_model, hd)
        self.v = nn.Linear(d_model, hd)
        b_in, b_out = 1.0 / math.sqrt(d_model), 1.0 / math.sqrt(hd * n_heads)
        self.q_experts = nn.Parameter(torch.empty(E, d_model, hd).uniform_(-b_in, b_in))
        self.o_experts = nn.Parameter(torch.empty(E, hd, d_model).uniform_(-b_out, b_out))

    def choose(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y [R, D] → (experts [R, k] long, gates [R, k]): top-k of softmax(router(y)),
        renormalised over the k."""
        p = torch.softmax(self.router(y), dim=-1)
        gate, idx = p.topk(self.n_heads, dim=-1)
        return idx, gate / gate.sum(-1, keepdim=True)

    def queries(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        R, H = y.shape[0], self.n_heads
        idx, _ = self.choose(y)
        rows = torch.arange(R, device=y.device).repeat_interleave(H)
        q = expert_apply(y.index_select(0, rows), self.q_experts, idx.reshape(-1)).view(R, H, self.head_dim)
        return q if rope is None else apply_rotary(q, rope[0][:, None], rope[1][:, None])

    def keys_values(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]],
                    x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y [R, D] normed rows → [R, 2·D]; values from the raw rows x when given (peri)."""
        R, H, hd = y.shape[0], self.n_heads, self.head_dim
        k = self.k(y).view(R, 1, hd)
        if rope is not None:
            k = apply_rotary(k, rope[0][:, None], rope[1][:, None])
        v = self.v(y if x is None else x).view(R, 1, hd)
        # every slot (head) of a query reads the same shared keys and values
        return torch.cat([k.expand(R, H, hd).reshape(R, H * hd), v.expand(R, H, hd).reshape(R, H * hd)], 1)

    def out(self, a: torch.Tensor) -> torch.Tensor:
        raise TypeError("moa's output experts are picked by the query token: call out_rows")

    def out_rows(self, a: torch.Tensor, y: Optional[torch.Tensor], ctx: AttnContext,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a [R, D] the slots' outputs, y [R, D] the query rows' normed input → [R, D]."""
        R, H, hd = a.shape[0], self.n_heads, self.head_dim
        idx, gate = self.choose(y)
        if self.mi > 0 and ctx is not None:
            enter = (ctx.row_weight(rows, R, y.dtype) > 0).nonzero().view(-1)
            if enter.numel():
                p_t = torch.softmax(self.router(y.index_select(0, enter)), dim=-1).t()   # [E, n]
                add_pooled_mi(ctx, "moa_mi", self, self.mi, p_t)
        o = expert_apply(a.reshape(R * H, hd), self.o_experts, idx.reshape(-1)).view(R, H, a.shape[1])
        return (o * gate[..., None]).sum(1)

    def flops_per_token(self, n_keys: torch.Tensor | float) -> torch.Tensor | float:
        D, hd, E = self.n_heads * self.head_dim, self.head_dim, self.n_experts
        # router; n_heads query and output experts (hd·D each); shared K, V; scores + sum
        return 2.0 * D * E + 4.0 * D * D + 4.0 * D * hd + 4.0 * D * n_keys
