"""CoLT5's conditional FFN against a slow loop (per sequence: coordinate descent on scalars,
the k best tokens through the heavy FFN; float64, pads, rows given as a compacted subset),
forward and gradients; the soft top-k's limits; refused by a causal model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ponder.models as models
from ponder.errors import ConfigError
from ponder.models.colt5 import CoLT5FFN, CoLT5Knobs, soft_top_k
from ponder.models.config import KindConfig, ModelConfig
from ponder.models.layers import AttnContext
from ponder.policies.fixed import Fixed
from tests.references import slow_route


@pytest.mark.parametrize("straight", [True, False])
@pytest.mark.parametrize("subset", [False, True], ids=["all-rows", "compacted-rows"])
def test_colt5_ffn_equals_per_sequence_loop(subset, straight):
    kn = CoLT5Knobs(capacity=0.3, straight_through=straight)
    torch.manual_seed(0)
    ffn = CoLT5FFN(d_model=8, d_ff=16, knobs=kn).double()
    B, L = 3, 9
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    enter = mask & (torch.rand(B, L, generator=g) < 0.8)  # frozen tokens: rows that do not enter
    ctx = AttnContext.build(mask, causal=False)
    ctx.set_entering(enter)
    if subset:  # the compacted stepper's rows: the entering tokens only
        rows = enter.reshape(-1).nonzero().view(-1)
    else:       # the dense pass: every row, pads and frozen ones included
        rows = None
    R = B * L if rows is None else rows.numel()
    x = torch.randn(R, 8, generator=g, dtype=torch.float64, requires_grad=True)
    fast = ffn(x, ctx, rows)

    flat = torch.arange(B * L) if rows is None else rows
    score = ffn.route(x).squeeze(-1)
    slow = []
    heavy_mult = {}
    for b in range(B):
        mine = [r for r in range(R) if int(flat[r]) // L == b and enter.view(-1)[flat[r]]]
        if not mine:
            continue
        for j, m in slow_route([score[r] for r in mine], kn).items():
            heavy_mult[mine[j]] = m
    for r in range(R):
        y = ffn.light_down(F.gelu(ffn.light_up(x[r])))
        if r in heavy_mult:
            y = y + heavy_mult[r] * ffn.heavy_down(F.gelu(ffn.heavy_up(x[r])))
        slow.append(y)
    slow = torch.stack(slow)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-10)
    assert 0 < len(heavy_mult) < int(enter.sum())
    Rm = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    params = list(ffn.parameters()) + [x]
    for a, b in zip(torch.autograd.grad((fast * Rm).sum(), params),
                    torch.autograd.grad((slow * Rm).sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_soft_top_k_limits():
    """Σz ≈ k, z ∈ [0, 1], 0 at invalid positions; a small ε gives the hard top-k."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 12, generator=g, dtype=torch.float64)
    valid = torch.ones(4, 12, dtype=torch.bool)
    valid[3, 5:] = False
    k = torch.tensor([1, 3, 6, 2])
    z = soft_top_k(s, valid, k, iters=200, eps=1e-3, eps_init=4.0, eps_decay=0.9)
    assert bool((z >= 0).all() and (z <= 1 + 1e-9).all()) and not bool(z[~valid].any())
    torch.testing.assert_close(z.sum(1), k.double(), atol=1e-2, rtol=0)
    hard = torch.zeros_like(valid)
    for b in range(4):
        hard[b, s[b].masked_fill(~valid[b], -1e9).topk(int(k[b])).indices] = True
    assert torch.equal(z > 0.5, hard)


def test_colt5_is_refused_by_a_causal_model_and_checks_knobs():
    base = dict(d_model=16, n_heads=2, ffn=KindConfig(kind="colt5"))
    with pytest.raises(ConfigError, match="not causal"):
        models.build(ModelConfig(causal=True, **base), Fixed(), vocab_size=9)
    for bad in ({"capacity": 0.0}, {"iters": 0}, {"eps_decay": 2.0}, {"nope": 1}):
        with pytest.raises(ConfigError):
            models.build(ModelConfig(**dict(base, ffn=KindConfig(kind="colt5", knobs=bad))),
                         Fixed(), vocab_size=9)


def test_colt5_flops_charge_the_heavy_branch_to_routed_tokens():
    """A model's FLOPs per token: light FFN + router for every token, the heavy FFN only for
    the ⌈capacity·L⌉ routed tokens of each sequence (dense and compacted alike)."""
    flops = {}
    for execution in ("dense", "compact"):
        cfg = ModelConfig(kind="stacked", d_model=16, n_heads=2, d_ff=32, prelude=0, coda=0,
                          max_steps=1, positions="none", execution=execution,
                          ffn=KindConfig(kind="colt5", knobs={"capacity": 0.25}))
        torch.manual_seed(0)
        model = models.build(cfg, Fixed(), vocab_size=9).eval()
        tokens = torch.randint(0, 9, (3, 8), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            flops[execution] = model(tokens).flops
    torch.testing.assert_close(flops["compact"], flops["dense"])
    d, L = 16, 8
    base = 8.0 * d * d + 4.0 * d * L + 4.0 * d * 4 + 2.0 * d + 2.0 * d * 9
    heavy = flops["dense"] - base
    assert sorted(set(heavy.flatten().tolist())) == [0.0, 4.0 * d * 32]
    assert (heavy > 0).sum(1).tolist() == [2, 2, 2]
