"""MoEUT's peri-layernorm (``model.norm_layout=peri``) against a slow loop over tokens, heads
and experts written from its rule (reference/mechanisms_next.md §18: queries, keys and
selections read the norm, values and the FFN's experts the raw residual; float64, with pads,
outputs and gradients); dense == compacted execution for the peri-capable kinds; the kinds
that cannot run peri refused with one line. And SUT's mutual-information loss (``topk`` /
``moa`` knob ``mi``) on a hand-computed case and against a per-token loop, pooled over a
module's calls (one term per module per forward, as SUT's ``acc_aux_loss``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import ponder.models as models
from ponder.errors import ConfigError
from ponder.models.config import KindConfig, ModelConfig
from ponder.models.experts.routing import mutual_information
from ponder.models.kinds import ATTENTIONS, FFNS
from ponder.models.layers import AttnContext, Block, BlockSpec
from ponder.policies.scripted import ScriptedPolicy
from tests.batches import assert_compact_equals_dense, assert_same_gradients, padded_batch

B, L, D, H, E, K = 2, 5, 8, 2, 3, 2


def top(scores: torch.Tensor, k: int) -> list[int]:
    """The k largest scores' indices, by a plain sort."""
    return sorted(range(len(scores)), key=lambda e: -float(scores[e].detach()))[:k]


def bank_expert(bank, e: int, v: torch.Tensor) -> torch.Tensor:
    return F.gelu(v @ bank.w1[e] + bank.b1[e]) @ bank.w2[e] + bank.b2[e]


def slow_peri(block: Block, x: torch.Tensor, mask: torch.Tensor) -> dict:
    """(b, i) → the peri block's output for real token i, one token / head / expert at a time."""
    attn, ffn, hd = block.attn, block.ffn, D // H
    out = {}
    for b in range(B):
        y = [block.norm1(x[b, j]) for j in range(L)]       # the norm feeds Q, K, selections only
        keys = [j for j in range(L) if mask[b, j]]
        if attn.name == "standard":
            Wk, bk = attn.kv.weight[:D], attn.kv.bias[:D]
            Wv, bv = attn.kv.weight[D:], attn.kv.bias[D:]
            k = {j: (Wk @ y[j] + bk).view(H, hd) for j in keys}
            v = {j: (Wv @ x[b, j] + bv).view(H, hd) for j in keys}          # raw residual
        else:  # switchhead: value experts picked from the norm, applied to the raw residual
            k = {j: attn.key(y[j]).view(H, hd) for j in keys}
            v = {}
            for j in keys:
                s = torch.sigmoid(attn.v_sel(y[j])).view(H, E)
                v[j] = torch.stack([sum(s[h, e] * (x[b, j] @ attn.v_experts[h, e]) for e in top(s[h], K))
                                    for h in range(H)])
        for i in keys:
            q = attn.q(y[i]).view(H, hd)
            heads = []
            for h in range(H):
                w = torch.softmax(torch.stack([q[h] @ k[j][h] for j in keys]) / math.sqrt(hd), 0)
                heads.append(sum(wj * v[j][h] for wj, j in zip(w, keys)))
            if attn.name == "standard":
                o = attn.o(torch.cat(heads))
            else:
                d = torch.sigmoid(attn.o_sel(y[i])).view(H, E)
                o = sum(d[h, e] * (heads[h] @ attn.o_experts[h, e]) for h in range(H) for e in top(d[h], K))
            h1 = x[b, i] + o                                    # the residual is not normalised
            if ffn.name == "dense":
                upd = ffn.down(F.gelu(ffn.up(h1)))              # a dense FFN reads the raw residual
            else:  # sigma_moe: the selection reads norm2, the experts the raw residual
                s = torch.sigmoid(ffn.router(block.norm2(h1)))
                upd = sum(s[e] * bank_expert(ffn.experts, e, h1) for e in top(s, ffn.k))
            out[b, i] = h1 + upd
    return out


@pytest.mark.parametrize("ffn,attn", [("dense", "standard"), ("sigma_moe", "switchhead")])
def test_peri_block_equals_slow_loop(ffn, attn):
    torch.manual_seed(0)
    spec = BlockSpec(d_model=D, n_heads=H, d_ff=12, norm_layout="peri",
                     ffn=ffn, ffn_knobs=FFNS.knobs(ffn, {"n_experts": E, "k": K} if ffn != "dense" else {}),
                     attention=attn,
                     attention_knobs=ATTENTIONS.knobs(attn, {"experts": E, "k": K} if attn != "standard" else {}))
    block = Block(spec=spec).double().train()
    g = torch.Generator().manual_seed(1)
    # a large residual scale: a norm in the wrong place would change the result
    x = (5.0 * torch.randn(B, L, D, generator=g, dtype=torch.float64)).requires_grad_(True)
    up = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    ctx = AttnContext.build(mask, causal=False)
    ctx.set_entering(mask)
    fast = block(x, ctx)
    ref = slow_peri(block, x, mask)
    for (b, i), r in ref.items():
        torch.testing.assert_close(fast[b, i], r, atol=1e-11, rtol=1e-10)
    loss = (fast * up)[mask].sum()
    loss_ref = sum((r * up[b, i]).sum() for (b, i), r in ref.items())
    assert_same_gradients(loss, loss_ref, block, x)
    # and it is not the pre-norm block with the same weights
    pre = copy.deepcopy(block)
    pre.peri = False
    assert not torch.allclose(pre(x, ctx)[mask], fast[mask])


def build(ffn: str, attn: str, execution: str, *, kind: str = "recurrent"):
    g = torch.Generator().manual_seed(5)
    steps = torch.randint(1, 4, (4, 9), generator=g)
    cfg = ModelConfig(kind=kind, d_model=16, n_heads=2, d_ff=32, prelude=1, core=2, coda=0,
                      max_steps=3, positions="rotary", execution=execution, norm_layout="peri",
                      ffn=KindConfig(kind=ffn), attention=KindConfig(kind=attn))
    torch.manual_seed(0)
    return models.build(cfg, ScriptedPolicy(steps=steps), vocab_size=11)


@pytest.mark.parametrize("ffn,attn", [("dense", "standard"), ("sigma_moe", "switchhead"), ("topk", "moa")])
def test_peri_compact_equals_dense(ffn, attn):
    dense = build(ffn, attn, "dense")
    assert_compact_equals_dense(dense, *padded_batch(vocab=11, seed=1))


def test_kinds_without_peri_are_refused():
    with pytest.raises(ConfigError, match="ffn kind 'fff' cannot run on the raw residual"):
        build("fff", "standard", "dense")
    with pytest.raises(ConfigError, match="unknown norm_layout"):
        Block(spec=BlockSpec(d_model=D, n_heads=H, d_ff=12, norm_layout="post"))
    cfg = ModelConfig(kind="adatape", d_model=16, n_heads=2, d_ff=32, max_steps=2, norm_layout="peri")
    with pytest.raises(ConfigError, match="pre-norm only"):
        models.build(cfg, ScriptedPolicy(steps=torch.ones(1, 1, dtype=torch.long)), vocab_size=11)


# -- SUT's mutual-information loss --------------------------------------------------------
def test_mutual_information_hand_computed():
    # two tokens, two experts: p(e|x1) = (0.5, 0.5), p(e|x2) = (0.8, 0.2); p̄ = (0.65, 0.35)
    probs_t = torch.tensor([[0.5, 0.8], [0.5, 0.2]], dtype=torch.float64)
    h_mean = -(0.65 * math.log(0.65) + 0.35 * math.log(0.35))
    h_cond = (math.log(2) + -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))) / 2
    assert abs(float(mutual_information(probs_t)) - (h_mean - h_cond)) < 1e-12
    # one-hot choices spread evenly: MI = log E; every token the same distribution: MI = 0
    assert abs(float(mutual_information(torch.eye(4, dtype=torch.float64))) - math.log(4)) < 1e-12
    assert abs(float(mutual_information(torch.full((3, 5), 1 / 3, dtype=torch.float64)))) < 1e-12


def test_topk_and_moa_mi_loss_equal_a_per_token_loop():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B * L, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    enter = mask.clone()
    enter[0, 1] = False                       # a frozen token: not in the loss
    ctx = AttnContext.build(mask, causal=False)
    ctx.set_entering(enter)
    rows = [r for r in range(B * L) if enter.view(-1)[r]]

    def loop_mi(router):
        ps = [torch.softmax(router(x[r]), 0).detach() for r in rows]
        ent = lambda p: -sum(float(v) * math.log(float(v)) for v in p)  # noqa: E731
        mean = sum(ps) / len(ps)
        return ent(mean) - sum(ent(p) for p in ps) / len(ps)

    torch.manual_seed(0)
    ffn = FFNS.cls("topk")(d_model=D, d_ff=12, knobs=FFNS.knobs("topk", {"n_experts": 4, "mi": 0.1})).double()
    ffn(x, ctx)
    assert abs(float(ctx.aux_terms()["topk_mi"].detach()) + 0.1 * loop_mi(ffn.router)) < 1e-12
    moa = ATTENTIONS.cls("moa")(d_model=D, n_heads=H, knobs=ATTENTIONS.knobs("moa", {"experts": 4, "mi": 0.3})).double()
    moa.out_rows(torch.randn(B * L, D, generator=g, dtype=torch.float64), x, ctx)
    assert abs(float(ctx.aux_terms()["moa_mi"].detach()) + 0.3 * loop_mi(moa.router)) < 1e-12


def pooled_loop_mi(routers_and_rows) -> float:
    """MI of one module's router over the rows of all its calls together, each row weighing
    1 / all rows (SUT's ``get_aux_loss_and_clear``): a loop over rows."""
    ps = [torch.softmax(router(v), 0).detach() for router, rows in routers_and_rows for v in rows]
    ent = lambda p: -sum(float(a) * math.log(float(a)) for a in p)  # noqa: E731
    mean = sum(ps) / len(ps)
    return ent(mean) - sum(ent(p) for p in ps) / len(ps)


@pytest.mark.parametrize("kind", ["topk", "moa"])
def test_mi_loss_pools_the_calls_of_a_module(kind):
    # a shared core applies one module N times per forward: SUT computes ONE MI over all the
    # calls' rows (not N per-call MIs summed, which grows with N and outweighed the task);
    # a second module (a prelude block) adds its own pooled term; gradients as the loop's
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    enter = mask.clone()
    enter[0, 1] = False
    torch.manual_seed(0)
    if kind == "topk":
        mods = [FFNS.cls("topk")(d_model=D, d_ff=12, knobs=FFNS.knobs("topk", {"n_experts": 4, "mi": 0.1})).double()
                for _ in range(2)]
    else:
        mods = [ATTENTIONS.cls("moa")(d_model=D, n_heads=H,
                                      knobs=ATTENTIONS.knobs("moa", {"experts": 4, "mi": 0.1})).double()
                for _ in range(2)]
    calls = [(mods[0], torch.randn(B * L, D, generator=g, dtype=torch.float64)) for _ in range(3)]
    calls.append((mods[1], torch.randn(B * L, D, generator=g, dtype=torch.float64)))
    ctx = AttnContext.build(mask, causal=False)
    ctx.set_entering(enter)
    for mod, x in calls:
        if kind == "topk":
            mod(x, ctx)
        else:
            mod.out_rows(torch.randn(B * L, D, generator=g, dtype=torch.float64), x, ctx)
    rows = [r for r in range(B * L) if enter.view(-1)[r]]
    name = f"{kind}_mi"
    want = -0.1 * (pooled_loop_mi([(mods[0].router, [x[r] for r in rows]) for m, x in calls if m is mods[0]])
                   + pooled_loop_mi([(mods[1].router, [x[r] for r in rows]) for m, x in calls if m is mods[1]]))
    got = ctx.aux_terms()[name]
    assert abs(float(got.detach()) - want) < 1e-12
    per_call = sum(-0.1 * pooled_loop_mi([(m.router, [x[r] for r in rows])]) for m, x in calls)
    assert abs(per_call - want) > 1e-3          # the old per-call sum differs here
    # gradient of the pooled term against the loop's, written with autograd on plain tensors
    got.backward()
    router = mods[0].router
    ent = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    w = router.weight.detach().clone().requires_grad_(True)
    ps = torch.stack([torch.softmax(F.linear(x[r], w, router.bias), 0)
                      for m, x in calls if m is mods[0] for r in rows])
    (-0.1 * (ent(ps.mean(0)) - ent(ps).mean())).backward()
    torch.testing.assert_close(router.weight.grad, w.grad, atol=1e-12, rtol=1e-10)
