"""Direction-sensitive geometric attention (the Neural Data Router's attention; Csordás,
Irie, Schmidhuber 2022, arXiv:2110.07732), in plain PyTorch for the CPU, and the attention
kind ``geometric`` built on it.

The official implementation is a CUDA extension; this is the cumulative-sum form of its
window sum.

For query i and key j ≠ i (the diagonal is masked):

    z_ij = scale·(q_i·k_j) + (β_back(i) if j < i else β_front(i)) + bias
    P_ij = σ(z_ij)
    A_ij = P_ij · ∏_{k ∈ S_ij} (1 − P_ik)

``S_ij``: the keys closer to i than j — each query scans outwards and takes the first key it
"matches". At equal distance d the right-hand neighbour is scanned first: for j = i − d the
set holds i + d, for j = i + d it does not hold i − d. Masked keys (pads, the future of a
causal query, keys outside a routed subset) have P = 0: never matched, never blocking.
``normalize``: A divided by its row sum (L1).

In log space ``log A_ij = log σ(z_ij) + Σ_{k∈S_ij} log σ(−z_ik)``: per query the terms are
summed by distance with one cumulative sum, so the cost is O(L²) per head like softmax
attention.

The weights are not a softmax over keys, so the kind brings its own ``attend_grid`` (the
dispatcher, :mod:`ponder.models.dispatch`, hands it every query at its own position: the
weights depend on the distance between query and key, so queries are never packed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.models.kinds import ATTENTIONS
from ponder.models.layers import Attention
from ponder.tasks.base import knob


def geometric_weights(z: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
                      normalize: bool = False, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """z [..., L, L] logits (queries × keys, direction biases included) → A [..., L, L].

    key_mask [..., L] bool (broadcastable to z's key axis): real keys; allowed [..., L, L]
    bool (broadcastable to z): which key each query may see (causality, routed keys);
    None: all."""
    L = z.shape[-1]
    device = z.device
    eye = torch.eye(L, dtype=torch.bool, device=device)
    usable = ~eye if key_mask is None else (~eye) & key_mask[..., None, :]
    if allowed is not None:
        usable = usable & allowed
    log_p = F.logsigmoid(z).masked_fill(~usable, float("-inf"))
    log_not = F.logsigmoid(-z).masked_fill(~usable, 0.0)      # log(1 − P), 0 where no key
    # log(1 − P) of the keys at distance δ = 1..L−1 to the left and to the right of each query
    i = torch.arange(L, device=device)
    delta = torch.arange(1, L, device=device)
    left_idx, right_idx = i[:, None] - delta[None, :], i[:, None] + delta[None, :]   # [L, L−1]
    pad = F.pad(log_not, (1, 1))                               # out of range → 0 (index shift 1)
    rows = i[:, None].expand(L, L - 1)
    left = pad[..., rows, (left_idx + 1).clamp(0, L + 1)]
    right = pad[..., rows, (right_idx + 1).clamp(0, L + 1)]
    # C[δ] = Σ_{δ' < δ} (left + right): every key strictly closer than distance δ (C[1] = 0)
    both = left + right
    C = torch.cat([torch.zeros_like(both[..., :1]), both.cumsum(-1)], dim=-1)      # [.., L, L]
    d = (i[None, :] - i[:, None]).abs()                         # [L, L] distance of key j
    before = C.gather(-1, (d - 1).clamp(min=0).expand_as(C))
    # a key to the left at distance d also waits for the right-hand key at distance d
    right_same = F.pad(right, (1, 0)).gather(-1, d.expand_as(C))
    window = before + torch.where(i[None, :] < i[:, None], right_same, torch.zeros_like(right_same))
    A = torch.exp(log_p + window)
    if normalize:
        A = A / A.sum(-1, keepdim=True).clamp(min=1e-12)
    return A


def geometric_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                        bias: float | torch.Tensor = 0.0, key_mask: Optional[torch.Tensor] = None,
                        normalize: bool = False, allowed: Optional[torch.Tensor] = None,
                        dropout: float = 0.0) -> torch.Tensor:
    """q, k, v [B, H, L, hd]; beta [B, H, L, 2] (β_back, β_front per query) → [B, H, L, hd].

    key_mask [B, L] bool real keys; allowed [B, 1, L, L] bool (or broadcastable) the keys
    each query may see; dropout on the weights (training)."""
    L = q.shape[-2]
    scale = q.shape[-1] ** -0.5
    z = torch.matmul(q, k.transpose(-1, -2)) * scale
    i = torch.arange(L, device=q.device)
    left_of = (i[None, :] < i[:, None])                         # key j left of query i
    z = z + torch.where(left_of, beta[..., 0:1], beta[..., 1:2]) + bias
    mask = None if key_mask is None else key_mask[:, None, :]   # [B, 1, L] → keys
    A = geometric_weights(z, mask, normalize, allowed)
    if dropout > 0.0:
        A = F.dropout(A, dropout)
    return torch.matmul(A, v)


# -- the attention kind ----------------------------------------------------------------------
@dataclass(frozen=True)
class GeometricKnobs:
    normalize: bool = knob(False, help="divide each query's weights by their sum (L1)",
                           choices=(False, True))


@ATTENTIONS.register
class GeometricAttention(Attention):
    """NDR's direction-sensitive geometric attention (``geometric``): each query takes the
    nearest key it matches, scanning outwards (right-hand neighbour first at equal distance);
    two learned direction biases per head and query, ``(β_back, β_front) = W_β y_i``.

    Queries carry the biases as two extra channels per head: ``queries(y)`` → [R, H, hd + 2]
    (the query vector, then β_back, β_front), so every execution mode hands them to
    :meth:`attend_grid` with the queries. Keys, values and the output projection are those of
    ``standard``. Causal: a causal model masks the keys to the right (the scan then only goes
    left); masked keys never match and never block."""

    name = "geometric"
    paper = "Csordás, Irie, Schmidhuber 2022, The Neural Data Router (arXiv:2110.07732)"
    Knobs = GeometricKnobs
    weights = "geometric"
    extra_query_channels = 2
    peri = False   # its reference forward reads keys and values from the normed rows only

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, dropout=dropout)
        self.normalize = bool((knobs or GeometricKnobs()).normalize)
        self.beta = nn.Linear(d_model, 2 * n_heads)   # (β_back, β_front) per head

    def queries(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """y [R, D] → [R, H, hd + 2]: rotated query, β_back, β_front."""
        return torch.cat([super().queries(y, rope), self.beta(y).view(-1, self.n_heads, 2)], dim=-1)

    def attend_grid(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    allowed: Optional[torch.Tensor], p: float) -> torch.Tensor:
        """q [B, H, L, hd + 2] (every position's query; rows nobody reads may hold anything
        finite), k, v [B, H, L, hd], allowed [B, 1, L, L] bool | None (None: every key) →
        [B, H, L, hd]. No parameters are read: any block's kind computes the same."""
        hd = k.shape[-1]
        return geometric_attention(q[..., :hd], k, v, q[..., hd:], allowed=allowed,
                                   normalize=self.normalize, dropout=p)

    def flops_per_token(self, n_keys: torch.Tensor | float) -> torch.Tensor | float:
        D, H = self.n_heads * self.head_dim, self.n_heads
        # Q, K, V, O and the direction biases; scores and weighted sum; per (head, key) the
        # log σ terms, the cumulative sum and the exp (counted as 8 operations)
        return 8.0 * D * D + 4.0 * D * H + 4.0 * D * n_keys + 8.0 * H * n_keys
