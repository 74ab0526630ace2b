"""``fff`` against a slow reference that walks the tree token by token (float64, with pads):
the soft mixture and hardening loss in training, the one-leaf hard descent at inference,
forward and gradients, all rows and a compacted subset of rows; FLOPs per token per mode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ponder.errors import ConfigError
from ponder.models.fff import FastFeedForward, FFFKnobs
from ponder.models.kinds import FFNS
from ponder.models.layers import AttnContext
from tests.batches import assert_rows_subset_matches, assert_same_gradients

B, L, D = 3, 6, 8


def make(depth: int = 3, leaf_width: int = 0, harden: float = 0.3, d_ff: int = 32) -> FastFeedForward:
    torch.manual_seed(0)
    ffn = FastFeedForward(d_model=D, d_ff=d_ff, knobs=FFFKnobs(depth=depth, leaf_width=leaf_width,
                                                               harden=harden)).double()
    with torch.no_grad():  # sharper decisions than the default init, so leaves differ a lot
        ffn.node_w.mul_(4.0)
    return ffn


def context() -> AttnContext:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return AttnContext.build(mask, causal=False)


def leaf_out(ffn: FastFeedForward, leaf: int, x: torch.Tensor) -> torch.Tensor:
    h = F.gelu(ffn.up[leaf] @ x + ffn.up_b[leaf])
    return ffn.down[leaf].T @ h + ffn.down_b[leaf]


def reference(ffn: FastFeedForward, x: torch.Tensor, real: torch.Tensor, training: bool):
    """Per token: walk every root-to-leaf path (training) or descend hard (inference).
    → (out [R, D], mean over real rows of the leaf distribution's entropy)."""
    outs, entropies = [], []
    for r in range(x.shape[0]):
        xr = x[r]
        if not training:
            node = 0
            for _ in range(ffn.depth):
                right = float((ffn.node_w[node] @ xr + ffn.node_b[node]).detach()) > 0
                node = 2 * node + (2 if right else 1)
            outs.append(leaf_out(ffn, node - (ffn.n_leaves - 1), xr))
            continue
        total, ent = torch.zeros(D, dtype=x.dtype), torch.zeros((), dtype=x.dtype)
        for leaf in range(ffn.n_leaves):
            p, node = torch.ones((), dtype=x.dtype), 0
            for level in reversed(range(ffn.depth)):  # the leaf's bits, most significant first
                c = torch.sigmoid(ffn.node_w[node] @ xr + ffn.node_b[node])
                right = (leaf >> level) & 1
                p = p * (c if right else 1 - c)
                node = 2 * node + (2 if right else 1)
            total = total + p * leaf_out(ffn, leaf, xr)
            ent = ent - p * torch.log(p)
        outs.append(total)
        entropies.append(ent)
    out = torch.stack(outs)
    mean_h = None
    if training:
        ents = torch.stack(entropies)
        mean_h = (ents * real).sum() / real.sum()
    return out, mean_h


@pytest.mark.parametrize("depth,leaf_width", [(1, 0), (3, 0), (2, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_fff_equals_reference_forward_and_gradients(depth, leaf_width, training):
    ffn = make(depth, leaf_width)
    ffn.train(training)
    ctx = context()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B * L, D, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(B * L, D, generator=g, dtype=torch.float64)
    real = ctx.key_mask.reshape(-1).double()

    out = ffn(x, ctx, None)
    ref, mean_h = reference(ffn, x, real, training)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    if training:
        torch.testing.assert_close(ctx.aux["fff_hardening"], 0.3 * mean_h, atol=1e-12, rtol=1e-10)
        loss = (out * up).sum() + ctx.aux["fff_hardening"]
        loss_ref = (ref * up).sum() + 0.3 * mean_h
    else:
        assert "fff_hardening" not in ctx.aux
        loss, loss_ref = (out * up).sum(), (ref * up).sum()
    grads = assert_same_gradients(loss, loss_ref, ffn, x)
    node_grad = grads["node_w"]
    if training:  # the mixture trains the routing nodes
        assert node_grad is not None and float(node_grad.abs().sum()) > 0

@pytest.mark.parametrize("training", [True, False])
def test_fff_on_a_subset_of_rows_equals_all_rows(training):
    """The compacted path passes only the active rows (with their flat indices): same outputs,
    and the hardening loss averages over the same real rows."""
    ffn = make()
    ffn.train(training)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B * L, D, generator=g, dtype=torch.float64)
    assert_rows_subset_matches(ffn, x, context)


def test_fff_inference_uses_one_leaf_per_token():
    """At inference a token's output is exactly its leaf's FFN: changing any other leaf's
    weights does not change it, and tokens spread over several leaves."""
    ffn = make(depth=3).eval()
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    leaf = ffn.leaves(x)
    assert len(set(leaf.tolist())) > 2
    before = ffn(x)
    with torch.no_grad():
        other = (leaf[0] + 1) % ffn.n_leaves
        ffn.up[other].add_(1.0)
        ffn.down_b[other].add_(1.0)
    after = ffn(x)
    untouched = leaf != other
    torch.testing.assert_close(after[untouched], before[untouched], atol=0, rtol=0)
    assert not torch.allclose(after[~untouched], before[~untouched])


def test_hardening_loss_hardens_and_vanishes_for_hard_decisions():
    ffn = make(depth=2)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ctx = AttnContext.build(torch.ones(4, 5, dtype=torch.bool), causal=False)
    ffn(x, ctx, None)
    soft = float(ctx.aux["fff_hardening"].detach())
    assert 0 < soft <= 0.3 * math.log(ffn.n_leaves) + 1e-12  # entropy of 4 leaves ≤ log 4
    # descending on the hardening loss alone sharpens the decisions
    opt = torch.optim.SGD([ffn.node_w, ffn.node_b], lr=5.0)
    for _ in range(50):
        ctx = AttnContext.build(torch.ones(4, 5, dtype=torch.bool), causal=False)
        ffn(x, ctx, None)
        opt.zero_grad()
        ctx.aux["fff_hardening"].backward()
        opt.step()
    ctx = AttnContext.build(torch.ones(4, 5, dtype=torch.bool), causal=False)
    ffn(x, ctx, None)
    assert float(ctx.aux["fff_hardening"].detach()) < 0.5 * soft
    with torch.no_grad():
        ffn.node_w.mul_(1e4)  # decisions saturate: the soft mixture becomes the hard tree
    ctx = AttnContext.build(torch.ones(4, 5, dtype=torch.bool), causal=False)
    soft_out = ffn(x, ctx, None)
    assert float(ctx.aux["fff_hardening"].detach()) < 1e-6
    torch.testing.assert_close(soft_out, ffn.eval()(x), atol=1e-6, rtol=1e-6)


def test_fff_flops_per_token_train_and_inference():
    ffn = make(depth=3, d_ff=32)  # 8 leaves of width 4, 7 nodes
    assert ffn.leaf_width == 4
    ffn.train()
    assert ffn.flops_per_token() == 2.0 * D * 7 + 4.0 * D * 4 * 8
    ffn.eval()
    assert ffn.flops_per_token() == 2.0 * D * 3 + 4.0 * D * 4
    # the leaves' total width is d_ff: training costs about a dense FFN, inference 1/8 of it
    dense = 4.0 * D * 32
    assert ffn.train().flops_per_token() > dense > 4 * ffn.eval().flops_per_token()


def test_fff_knobs_are_checked():
    with pytest.raises(ConfigError):
        FFNS.knobs("fff", {"depth": 0})
    with pytest.raises(ConfigError):
        FFNS.knobs("fff", {"harden": -1.0})
    with pytest.raises(ConfigError, match="too small"):
        FastFeedForward(d_model=D, d_ff=4, knobs=FFFKnobs(depth=3))


@pytest.mark.parametrize("kind", ["fff", "sharcs", "lowrank", "monarch", "btt"])
@pytest.mark.parametrize("training", [True, False])
def test_zero_rows_give_zero_rows(kind, training):
    """A compacted call with no rows (nobody entering) returns [0, D] and emits the same aux
    names as a call with rows (value 0)."""
    ffn = FFNS.cls(kind)(d_model=16, d_ff=32, knobs=FFNS.knobs(kind, {})).train(training)
    some, none = context(), context()
    ffn(torch.randn(4, 16), some, torch.arange(4))
    out = ffn(torch.zeros(0, 16), none, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 16)
    assert none.aux.keys() == some.aux.keys()
    assert all(float(v.detach()) == 0.0 for v in none.aux.values())


@pytest.mark.parametrize("training", [True, False])
def test_model_flops_known_answer(training):
    """A fixed-depth model with fff blocks counts the tree's FLOPs of the mode it runs in:
    every node and leaf in training, d decisions and one leaf at inference."""
    import ponder.models as models
    from ponder.models.config import KindConfig, ModelConfig
    from ponder.policies.scripted import ScriptedPolicy

    d, d_ff, P, G, C, N, V = 16, 32, 1, 2, 1, 3, 11
    cfg = ModelConfig(d_model=d, n_heads=2, d_ff=d_ff, prelude=P, core=G, coda=C, max_steps=N,
                      positions="none", ffn=KindConfig(kind="fff", knobs={"depth": 2}))
    model = models.build(cfg, ScriptedPolicy(steps=N), vocab_size=V).train(training)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 4:] = False
    with torch.no_grad():
        flops = model(tokens, mask).flops
    w = d_ff // 4
    tree = 2.0 * d * 3 + 4.0 * d * w * 4 if training else 2.0 * d * 2 + 4.0 * d * w
    keys = mask.sum(1, keepdim=True).expand_as(mask).double()
    block = 8.0 * d * d + 4.0 * keys * d + tree
    torch.testing.assert_close(flops, ((P + C + N * G) * block + 2.0 * d * V) * mask)
