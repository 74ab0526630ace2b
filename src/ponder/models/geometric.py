"""Direction-sensitive geometric attention (the Neural Data Router's attention; Csordás,
Irie, Schmidhuber 2022, arXiv:2110.07732), in plain PyTorch for the CPU.

A building block, not an attention kind yet: its weights are not a softmax over keys, so it
does not go through the one dispatcher (:mod:`ponder.models.dispatch`), and the NDR block
(copy gate instead of residuals) is not built. The official implementation is a CUDA
extension; this is the cumulative-sum form of its window sum.

For query i and key j ≠ i (the diagonal is masked):

    z_ij = scale·(q_i·k_j) + (β_back(i) if j < i else β_front(i)) + bias
    P_ij = σ(z_ij)
    A_ij = P_ij · ∏_{k ∈ S_ij} (1 − P_ik)

``S_ij``: the keys closer to i than j — each query scans outwards and takes the first key it
"matches". At equal distance d the right-hand neighbour is scanned first: for j = i − d the
set holds i + d, for j = i + d it does not hold i − d. Padded keys have P = 0 (never
matched, never block). ``normalize``: A divided by its row sum (L1).

In log space ``log A_ij = log σ(z_ij) + Σ_{k∈S_ij} log σ(−z_ik)``: per query the terms are
summed by distance with one cumulative sum, so the cost is O(L²) per head like softmax
attention.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def geometric_weights(z: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
                      normalize: bool = False) -> torch.Tensor:
    """z [..., L, L] logits (queries × keys, direction biases included) → A [..., L, L].

    key_mask [..., L] bool (broadcastable to z's key axis): real keys; None: all real."""
    L = z.shape[-1]
    device = z.device
    eye = torch.eye(L, dtype=torch.bool, device=device)
    usable = ~eye if key_mask is None else (~eye) & key_mask[..., None, :]
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
                        normalize: bool = False) -> torch.Tensor:
    """q, k, v [B, H, L, hd]; beta [B, H, L, 2] (β_back, β_front per query) → [B, H, L, hd]."""
    L = q.shape[-2]
    scale = q.shape[-1] ** -0.5
    z = torch.matmul(q, k.transpose(-1, -2)) * scale
    i = torch.arange(L, device=q.device)
    left_of = (i[None, :] < i[:, None])                         # key j left of query i
    z = z + torch.where(left_of, beta[..., 0:1], beta[..., 1:2]) + bias
    mask = None if key_mask is None else key_mask[:, None, :]   # [B, 1, L] → keys
    A = geometric_weights(z, mask, normalize)
    return torch.matmul(A, v)
