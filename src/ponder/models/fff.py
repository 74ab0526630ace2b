"""``fff``: the fast feedforward tree (Belcak & Wattenhofer 2023, arXiv:2308.14711).

A balanced binary tree of depth d routes each token to one of 2^d small leaf FFNs::

    node n:  c_n = σ(w_nᵀ x + b_n)          the probability of going right at n
    leaf ℓ:  f_ℓ(x) = down_ℓ gelu(up_ℓ x + a_ℓ) + e_ℓ     (hidden width ``leaf_width``)

Training (``module.training``): the soft mixture ``Σ_ℓ p_ℓ(x) f_ℓ(x)``, where p_ℓ is the product
of c or 1 − c along ℓ's path, so every leaf (and every node) runs for every token; the
**hardening loss** is the entropy of each token's leaf distribution, which by the chain rule
equals ``Σ_n P(reach n) · H(c_n)`` (the Bernoulli entropies of the decisions on the way,
weighted by how likely the token is to meet them). It pushes the decisions towards 0 / 1 so
that the hard tree of inference computes what training learned.

Inference (``not module.training``, in every execution mode): hard descent (right iff
``w_nᵀ x + b_n > 0``), then exactly one leaf per token: d node dot-products plus one leaf of
width ``leaf_width``. The rows are sorted by leaf and each leaf runs one matmul on its
contiguous rows (no per-token weight gather, no masks).

Tree layout: heap order, node n's children are 2n+1 (left) and 2n+2 (right); leaf ℓ (0-based,
left to right) is heap node ``2^d − 1 + ℓ``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.models.experts.routing import entering, note_experts
from ponder.models.kinds import FFNS
from ponder.models.layers import FFN, AttnContext
from ponder.tasks.base import knob


@dataclass(frozen=True)
class FFFKnobs:
    depth: int = knob(3, lo=1, hi=12, help="tree depth d: 2^d leaves, d decisions per token at inference")
    leaf_width: int = knob(0, lo=0, hi=1 << 16,
                           help="hidden width of one leaf (0: d_ff / 2^depth, so the leaves' total width is d_ff)")
    harden: float = knob(0.1, lo=0.0, hi=100.0,
                         help="weight of the hardening loss (entropy of each token's leaf mixture)")


@FFNS.register
class FastFeedForward(FFN):
    """Fast feedforward tree (``fff``): soft mixture of 2^depth leaves in training, one leaf
    per token at inference.

    forward(x [R, D], ctx, rows) → [R, D]
    """

    name = "fff"
    paper = "Belcak & Wattenhofer 2023, Fast Feedforward Networks (arXiv:2308.14711)"
    Knobs = FFFKnobs

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        k = knobs or FFFKnobs()
        n_leaves = 1 << k.depth
        width = k.leaf_width or d_ff // n_leaves
        if width < 1:
            raise ConfigError(f"ffn kind 'fff': d_ff={d_ff} is too small for 2^{k.depth} leaves; "
                              f"set knobs.leaf_width or a smaller depth")
        self.depth, self.n_leaves, self.leaf_width, self.harden = k.depth, n_leaves, width, k.harden
        self.d_model = d_model
        n_nodes = n_leaves - 1
        # nn.Linear's default init, per node and per leaf (fan-in D for node and up, w for down)
        bound_in, bound_w = 1.0 / math.sqrt(d_model), 1.0 / math.sqrt(width)
        self.node_w = nn.Parameter(torch.empty(n_nodes, d_model).uniform_(-bound_in, bound_in))
        self.node_b = nn.Parameter(torch.empty(n_nodes).uniform_(-bound_in, bound_in))
        # up [leaves, w, D] (each leaf an nn.Linear weight), down [leaves, w, D] (its transpose):
        # both contiguous per leaf for the inference matmuls, and views of one [leaves·w, D]
        # matrix for the training mixture
        self.up = nn.Parameter(torch.empty(n_leaves, width, d_model).uniform_(-bound_in, bound_in))
        self.up_b = nn.Parameter(torch.empty(n_leaves, width).uniform_(-bound_in, bound_in))
        self.down = nn.Parameter(torch.empty(n_leaves, width, d_model).uniform_(-bound_w, bound_w))
        self.down_b = nn.Parameter(torch.empty(n_leaves, d_model).uniform_(-bound_w, bound_w))
        self.drop = nn.Dropout(dropout)

    # -- training: the soft mixture -------------------------------------------------------
    def leaf_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [R, D] → (leaf probabilities [R, 2^d], entropy of that distribution [R])."""
        s = F.linear(x, self.node_w, self.node_b)                     # [R, nodes]
        log_r, log_l = F.logsigmoid(s), F.logsigmoid(-s)              # log c, log (1 − c)
        node_h = -(log_r.exp() * log_r + log_l.exp() * log_l)         # Bernoulli entropy
        p = x.new_ones(x.shape[0], 1)
        entropy = x.new_zeros(x.shape[0])
        for level in range(self.depth):
            lo, hi = (1 << level) - 1, (1 << (level + 1)) - 1          # this level's heap nodes
            c = log_r[:, lo:hi].exp()
            entropy = entropy + (p * node_h[:, lo:hi]).sum(-1)
            p = torch.stack([p * (1.0 - c), p * c], dim=-1).reshape(x.shape[0], 2 << level)
        return p, entropy

    def _soft(self, x: torch.Tensor, ctx: Optional[AttnContext],
              rows: Optional[torch.Tensor]) -> torch.Tensor:
        R, D = x.shape
        p, entropy = self.leaf_probs(x)
        h = F.gelu(F.linear(x, self.up.view(-1, D), self.up_b.view(-1)))   # [R, leaves·w]
        h = (h.view(R, self.n_leaves, self.leaf_width) * p[:, :, None]).view(R, self.n_leaves * self.leaf_width)
        out = h @ self.down.view(-1, D) + p @ self.down_b
        if ctx is not None:
            w = ctx.row_weight(rows, R, x.dtype)
            mean_h = (entropy * w).sum() / w.sum().clamp(min=1)
            if self.harden > 0:
                ctx.add_aux("fff_hardening", self.harden * mean_h)
            ctx.add_stat("fff_leaf_entropy", mean_h.detach())
        return out

    # -- inference: one leaf per token ----------------------------------------------------
    def leaves(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, D] → the leaf each row reaches by hard descent, [R] long in [0, 2^d)."""
        node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for _ in range(self.depth):
            s = (x * self.node_w.index_select(0, node)).sum(-1) + self.node_b.index_select(0, node)
            node = 2 * node + 1 + (s > 0).long()
        return node - (self.n_leaves - 1)

    def _hard(self, x: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(leaf, stable=True)
        counts = torch.bincount(leaf, minlength=self.n_leaves).tolist()
        xs = x.index_select(0, order)
        parts, start = [], 0
        for l, n in enumerate(counts):
            if n:
                seg = xs[start:start + n]
                h = F.gelu(F.linear(seg, self.up[l], self.up_b[l]))
                parts.append(torch.addmm(self.down_b[l], h, self.down[l]))
                start += n
        out = torch.cat(parts) if parts else x.new_zeros(0, x.shape[1])
        return torch.zeros_like(x).index_copy(0, order, out)

    def forward(self, x: torch.Tensor, ctx: Optional[AttnContext] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] (normed) → [R, D]. At inference each entering row's leaf is noted as its
        expert (``routing.note_experts``: the eval records' ``expert`` column, so the expert ×
        complexity diagnostics cover the tree's leaves too)."""
        if self.training:
            return self.drop(self._soft(x, ctx, rows))
        leaf = self.leaves(x)
        idx = entering(ctx, rows, x).nonzero().view(-1)
        note_experts(ctx, rows, x.shape[0], idx, leaf.index_select(0, idx))
        return self.drop(self._hard(x, leaf))

    def flops_per_token(self) -> float:
        D, w = self.d_model, self.leaf_width
        if self.training:  # every node and every leaf, for every token
            return 2.0 * D * (self.n_leaves - 1) + 4.0 * D * w * self.n_leaves
        return 2.0 * D * self.depth + 4.0 * D * w
