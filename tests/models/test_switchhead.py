"""``switchhead`` in a block against a slow loop over queries, keys, heads and chosen experts
(float64, with pads, causal and not): outputs, the entropy regulariser and every gradient.
Dense == compacted execution is checked for every attention kind in test_block_kinds.py."""

from __future__ import annotations

import math

import pytest
import torch

from ponder.errors import ConfigError
from ponder.models.kinds import ATTENTIONS
from ponder.models.layers import AttnContext, Block, BlockSpec
from ponder.models.switchhead import SwitchHead, SwitchHeadKnobs
from tests.batches import assert_same_gradients

B, L, D, H, E, K = 2, 5, 8, 2, 3, 2


def top(scores: torch.Tensor) -> list[int]:
    """The K largest of E scores, by a plain sort."""
    return sorted(range(len(scores)), key=lambda e: -float(scores[e].detach()))[:K]


def reference(block: Block, x: torch.Tensor, mask: torch.Tensor, causal: bool):
    attn, hd = block.attn, D // H
    y = block.norm1(x)
    out = {}
    for b in range(B):
        q = [attn.q(y[b, i]).view(H, hd) for i in range(L)]
        k = [attn.key(y[b, j]).view(H, hd) for j in range(L)]
        v = []
        for j in range(L):
            s = torch.sigmoid(attn.v_sel(y[b, j])).view(H, E)
            v.append([sum(s[h, e] * (y[b, j] @ attn.v_experts[h, e]) for e in top(s[h]))
                      for h in range(H)])
        for i in range(L):
            if not mask[b, i]:
                continue
            keys = [j for j in range(L) if mask[b, j] and (not causal or j <= i)]
            d = torch.sigmoid(attn.o_sel(y[b, i])).view(H, E)
            o = torch.zeros(D, dtype=x.dtype)
            for h in range(H):
                w = torch.softmax(torch.stack([q[i][h] @ k[j][h] for j in keys]) / math.sqrt(hd), 0)
                a = sum(wj * v[j][h] for wj, j in zip(w, keys))
                o = o + sum(d[h, e] * (a @ attn.o_experts[h, e]) for e in top(d[h]))
            h1 = x[b, i] + o
            out[b, i] = h1 + block.ffn(block.norm2(h1))
    # the regulariser: negative entropy of each head's mean output-expert distribution
    p = [torch.softmax(attn.o_sel(y[b, i]).view(H, E), -1) for b in range(B) for i in range(L) if mask[b, i]]
    mean = torch.stack(p).mean(0)
    reg = attn.entropy_reg * (mean * mean.log()).sum(-1).mean()
    return out, reg


@pytest.mark.parametrize("causal", [False, True])
def test_switchhead_block_equals_slow_loop(causal):
    torch.manual_seed(0)
    spec = BlockSpec(d_model=D, n_heads=H, d_ff=16, attention="switchhead",
                     attention_knobs=SwitchHeadKnobs(experts=E, k=K, entropy_reg=0.1))
    block = Block(spec=spec).double().train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    ctx = AttnContext.build(mask, causal=causal)
    ctx.set_entering(mask)
    fast = block(x, ctx)
    ref, reg = reference(block, x, mask, causal)
    for (b, i), r in ref.items():
        torch.testing.assert_close(fast[b, i], r, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ctx.aux["switchhead_entropy"], reg, atol=1e-12, rtol=1e-10)
    loss = (fast * up)[mask].sum() + ctx.aux["switchhead_entropy"]
    loss_ref = sum((r * up[b, i]).sum() for (b, i), r in ref.items()) + reg
    grads = assert_same_gradients(loss, loss_ref, block, x)
    # the selections are on the gradient path (through the gates of the chosen experts)
    for sel in ("attn.v_sel.weight", "attn.o_sel.weight"):
        assert float(grads[sel].abs().sum()) > 0, sel


def test_switchhead_flops_and_knobs():
    attn = SwitchHead(d_model=16, n_heads=4, knobs=SwitchHeadKnobs(experts=4, k=2))
    # Q, K (2·D² each ×2 FLOPs), 2 value + 2 output experts per head (hd·D each), selections
    assert attn.flops_per_token(10.0) == 4 * 16 * 16 + 4 * 2 * 16 * 16 + 4 * 16 * 4 * 4 + 4 * 16 * 10
    with pytest.raises(ConfigError, match="exceeds"):
        SwitchHead(d_model=16, n_heads=4, knobs=SwitchHeadKnobs(experts=2, k=3))
    with pytest.raises(ConfigError):
        ATTENTIONS.knobs("switchhead", {"experts": 0})
