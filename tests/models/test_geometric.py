"""Geometric attention (NDR's) against the definition, one (query, key) pair at a time:
the product over the closer keys with the right-hand neighbour first at equal distance,
padded keys, the L1 normalisation; gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from ponder.models.geometric import geometric_attention, geometric_weights


def slow_weights(z, key_mask, normalize):
    """z [L, L], key_mask [L] bool → A [L, L] by the definition."""
    L = z.shape[0]
    P = torch.sigmoid(z)
    A = torch.zeros_like(z)
    for i in range(L):
        for j in range(L):
            if j == i or not key_mask[j]:
                continue
            d = abs(i - j)
            closer = [k for k in range(L) if 0 < abs(k - i) < d]
            if j < i and i + d < L:
                closer.append(i + d)  # the right-hand neighbour is scanned first
            a = P[i, j]
            for kk in closer:
                if key_mask[kk]:
                    a = a * (1 - P[i, kk])
            A[i, j] = a
    if normalize:
        A = A / A.sum(-1, keepdim=True).clamp(min=1e-12)
    return A


@pytest.mark.parametrize("normalize", [False, True])
def test_weights_equal_the_definition(normalize):
    g = torch.Generator().manual_seed(0)
    B, H, L = 2, 2, 7
    z = torch.randn(B, H, L, L, generator=g, dtype=torch.float64) * 2
    key_mask = torch.ones(B, L, dtype=torch.bool)
    key_mask[1, 5:] = False
    key_mask[1, 2] = False
    fast = geometric_weights(z, key_mask[:, None, :], normalize)
    for b in range(B):
        for h in range(H):
            torch.testing.assert_close(fast[b, h], slow_weights(z[b, h], key_mask[b], normalize),
                                       atol=1e-12, rtol=1e-10)


def test_attention_uses_direction_biases_and_gradchecks():
    g = torch.Generator().manual_seed(1)
    B, H, L, hd = 1, 2, 5, 3
    q, k, v = (torch.randn(B, H, L, hd, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    beta = torch.randn(B, H, L, 2, generator=g, dtype=torch.float64, requires_grad=True)
    out = geometric_attention(q, k, v, beta, bias=-0.5)
    # by hand for one query: logits with β_back to the left, β_front to the right
    i = 2
    z = (q[0, 0] @ k[0, 0].T)[i] / math.sqrt(hd) + torch.where(torch.arange(L) < i, beta[0, 0, i, 0],
                                                                beta[0, 0, i, 1]) - 0.5
    Z = torch.zeros(L, L, dtype=torch.float64)
    Z[i] = z
    A = slow_weights(Z, torch.ones(L, dtype=torch.bool), False)[i]
    torch.testing.assert_close(out[0, 0, i], A @ v[0, 0])
    assert torch.autograd.gradcheck(lambda *t: geometric_attention(*t, normalize=True), (q, k, v, beta))
