"""``sharcs`` against a slow per-token reference (the mixture of the K nested sub-networks in
training, the picked sub-network at inference; float64, with pads); per-token FLOPs counted
through ``ctx.count_row_flops``, known answers at the model level."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ponder.models as models
from ponder.errors import ConfigError
from ponder.models.config import KindConfig, ModelConfig
from ponder.models.layers import AttnContext, Block, BlockSpec
from ponder.models.sharcs import DynamicWidthFFN, SharcsKnobs
from ponder.policies.scripted import ScriptedPolicy
from tests.batches import assert_rows_subset_matches, assert_same_gradients

B, L, D, DFF = 3, 6, 8, 12


def make(levels: int = 3, cost: float = 0.2, harden: float = 0.05) -> DynamicWidthFFN:
    torch.manual_seed(0)
    ffn = DynamicWidthFFN(d_model=D, d_ff=DFF, knobs=SharcsKnobs(levels=levels, cost=cost,
                                                                 harden=harden)).double()
    with torch.no_grad():
        ffn.router.weight.mul_(5.0)  # a spread of picks
    return ffn


def context() -> AttnContext:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    return AttnContext.build(mask, causal=False)


def sub_network(ffn, k: int, x: torch.Tensor) -> torch.Tensor:
    """f_k(x): the first w_k hidden units only."""
    w = ffn.widths[k]
    h = F.gelu(ffn.up[:w] @ x + ffn.up_b[:w])
    return ffn.down_t[:w].T @ h + ffn.down_b


def reference(ffn, x, real, training):
    outs, widths, ents = [], [], []
    for r in range(x.shape[0]):
        p = torch.softmax(ffn.router(x[r]), -1)
        if training:
            outs.append(sum(p[k] * sub_network(ffn, k, x[r]) for k in range(ffn.levels)))
            widths.append(sum(p[k] * ffn.widths[k] / ffn.d_ff for k in range(ffn.levels)))
            ents.append(-sum(p[k] * torch.log(p[k]) for k in range(ffn.levels)))
        else:
            k = int(p.argmax())
            outs.append(sub_network(ffn, k, x[r]))
            widths.append(ffn.widths[k])
    if not training:
        return torch.stack(outs), torch.tensor(widths, dtype=torch.float64), None
    mean = lambda v: (torch.stack(v) * real).sum() / real.sum()  # noqa: E731
    return torch.stack(outs), mean(widths), mean(ents)


@pytest.mark.parametrize("levels", [2, 3, 4])
@pytest.mark.parametrize("training", [True, False])
def test_sharcs_equals_reference_forward_and_gradients(levels, training):
    ffn = make(levels).train(training)
    ctx = context()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B * L, D, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(B * L, D, generator=g, dtype=torch.float64)
    real = ctx.key_mask.reshape(-1).double()
    out = ffn(x, ctx, None)
    ref, width, ent = reference(ffn, x, real, training)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    if training:
        torch.testing.assert_close(ctx.aux["sharcs_width"], 0.2 * width, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(ctx.aux["sharcs_entropy"], 0.05 * ent, atol=1e-12, rtol=1e-10)
        loss = (out * up).sum() + ctx.aux["sharcs_width"] + ctx.aux["sharcs_entropy"]
        loss_ref = (ref * up).sum() + 0.2 * width + 0.05 * ent
    else:
        assert not ctx.aux
        assert len(set(width.tolist())) > 1  # tokens run different widths
        loss, loss_ref = (out * up).sum(), (ref * up).sum()
    grads = assert_same_gradients(loss, loss_ref, ffn, x)
    if training:  # the router is on the gradient path of the task loss and the penalties
        assert float(grads["router.weight"].abs().sum()) > 0


@pytest.mark.parametrize("training", [True, False])
def test_sharcs_subset_of_rows_equals_all_rows(training):
    ffn = make().train(training)
    x = torch.randn(B * L, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_rows_subset_matches(ffn, x, context)


def test_sharcs_counts_each_rows_width():
    spec = BlockSpec(d_model=D, n_heads=2, d_ff=DFF, ffn="sharcs", ffn_knobs=SharcsKnobs(levels=3))
    torch.manual_seed(0)
    block = Block(spec=spec).double().eval()
    with torch.no_grad():
        block.ffn.router.weight.mul_(5.0)
    ctx = context()
    ctx.flops = torch.zeros(B, L, dtype=torch.float64)
    x = torch.randn(B * L, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ctx.count_block(block, ctx.key_mask)
    static = ctx.flops.clone()
    with torch.no_grad():
        block.ffn(x, ctx, None)
        _, widths, _ = reference(block.ffn, x, None, training=False)
    real = ctx.key_mask.reshape(-1).double()
    torch.testing.assert_close(ctx.flops.view(-1), static.view(-1) + real * 4.0 * D * widths)
    # the static part is the router's (plus attention); the widths vary per token
    n_keys = ctx.key_mask.sum(1, keepdim=True).expand(B, L).double()
    torch.testing.assert_close(static, (8.0 * D * D + 4.0 * D * n_keys + 2.0 * D * 3) * ctx.key_mask)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("execution", ["dense", "auto"])
def test_model_flops_known_answer_at_forced_widths(level, execution):
    """Every router forced to one level: the model's FLOPs are the block formula with that
    width (and the router), in the reference and the compacted path."""
    d, d_ff, P, G, C, N, V = 16, 30, 1, 2, 1, 3, 11
    cfg = ModelConfig(d_model=d, n_heads=2, d_ff=d_ff, prelude=P, core=G, coda=C, max_steps=N,
                      positions="none", execution=execution,
                      ffn=KindConfig(kind="sharcs", knobs={"levels": 3}))
    model = models.build(cfg, ScriptedPolicy(steps=N), vocab_size=V).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("router.bias"):
                p.zero_()
                p[level] = 1e4
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        flops = model(tokens, mask).flops
    w = (level + 1) * d_ff // 3
    keys = mask.sum(1, keepdim=True).expand_as(mask).double()
    block = 8.0 * d * d + 4.0 * keys * d + 2.0 * d * 3 + 4.0 * d * w
    torch.testing.assert_close(flops, ((P + C + N * G) * block + 2.0 * d * V) * mask)


def test_sharcs_knobs_are_checked():
    with pytest.raises(ConfigError, match="smaller than levels"):
        DynamicWidthFFN(d_model=D, d_ff=3, knobs=SharcsKnobs(levels=4))
    from ponder.models.kinds import FFNS
    with pytest.raises(ConfigError):
        FFNS.knobs("sharcs", {"levels": 1})
