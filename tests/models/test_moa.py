"""``moa`` in a block against a slow loop over queries, their chosen experts and keys
(float64, with pads, causal and not): outputs and every gradient. Dense == compacted
execution is checked for every attention kind in test_block_kinds.py."""

from __future__ import annotations

import math

import pytest
import torch

from ponder.errors import ConfigError
from ponder.models.layers import AttnContext, Block, BlockSpec
from ponder.models.moa import MixtureOfAttentionHeads, MoAKnobs
from tests.batches import assert_same_gradients

B, L, D, H, E = 2, 5, 8, 2, 5


def reference(block: Block, x: torch.Tensor, mask: torch.Tensor, causal: bool):
    attn, hd = block.attn, D // H
    y = block.norm1(x)
    out = {}
    for b in range(B):
        keys_all = [attn.k(y[b, j]) for j in range(L)]
        vals_all = [attn.v(y[b, j]) for j in range(L)]
        for i in range(L):
            if not mask[b, i]:
                continue
            p = torch.softmax(attn.router(y[b, i]), 0)
            chosen = sorted(range(E), key=lambda e: -float(p[e].detach()))[:H]
            total = sum(p[e] for e in chosen)
            keys = [j for j in range(L) if mask[b, j] and (not causal or j <= i)]
            o = torch.zeros(D, dtype=x.dtype)
            for e in chosen:
                q = y[b, i] @ attn.q_experts[e]
                w = torch.softmax(torch.stack([q @ keys_all[j] for j in keys]) / math.sqrt(hd), 0)
                a = sum(wj * vals_all[j] for wj, j in zip(w, keys))
                o = o + (p[e] / total) * (a @ attn.o_experts[e])
            h1 = x[b, i] + o
            out[b, i] = h1 + block.ffn(block.norm2(h1))
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_moa_block_equals_slow_loop(causal):
    torch.manual_seed(0)
    spec = BlockSpec(d_model=D, n_heads=H, d_ff=16, attention="moa", attention_knobs=MoAKnobs(experts=E))
    block = Block(spec=spec).double().train()
    with torch.no_grad():
        block.attn.router.weight.mul_(3.0)  # a spread of expert picks
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    ctx = AttnContext.build(mask, causal=causal)
    fast = block(x, ctx)
    ref = reference(block, x, mask, causal)
    for (b, i), r in ref.items():
        torch.testing.assert_close(fast[b, i], r, atol=1e-12, rtol=1e-10)
    picks = {tuple(sorted(block.attn.choose(block.norm1(x)[b, i])[0].tolist())) for (b, i) in ref}
    assert len(picks) > 1  # tokens use different experts
    loss = (fast * up)[mask].sum()
    loss_ref = sum((r * up[b, i]).sum() for (b, i), r in ref.items())
    grads = assert_same_gradients(loss, loss_ref, block, x)
    assert float(grads["attn.router.weight"].abs().sum()) > 0  # gates train the router


def test_moa_flops_and_knobs():
    attn = MixtureOfAttentionHeads(d_model=16, n_heads=4, knobs=MoAKnobs(experts=8))
    assert attn.flops_per_token(10.0) == 2 * 16 * 8 + 4 * 16 * 16 + 4 * 16 * 4 + 4 * 16 * 10
    with pytest.raises(ConfigError, match="exceeds"):
        MixtureOfAttentionHeads(d_model=16, n_heads=4, knobs=MoAKnobs(experts=3))
