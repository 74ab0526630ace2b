"""Mixture-of-Recursions (expert choice and token choice, both key/value options) against a
slow loop over recursions and tokens (float64, pads): logits and every gradient, in dense and
compacted execution; the capacity schedule, the balancing loss, and what is refused."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.models.layers import AttnContext

V, N = 11, 4


def build(name: str, *, kv: str, causal: bool = False, execution: str = "dense", **knobs):
    cfg = ModelConfig(kind="recurrent", d_model=16, n_heads=2, d_ff=32, prelude=1, core=1, coda=1,
                      max_steps=N, causal=causal, positions="learned", step_embedding=False,
                      execution=execution)
    torch.manual_seed(0)
    model = models.build(cfg, policies.get(name, kv=kv, **knobs), vocab_size=V).double().train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # routers with a spread of scores (learned positions: no two tokens tie)
        for p in model.policy.parameters():
            p.normal_(0.0, 1.0, generator=g)
    return model


def batch():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, V, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 4:] = False
    return tokens, mask


def slow_block(block, x, src, mask, enter, weight, key_ok, causal):
    """Entering tokens: x + w·(block(x) − x) with keys/values from ``src`` of the tokens
    ``key_ok`` (and itself), one token at a time; the others unchanged."""
    attn, H, hd = block.attn, block.attn.n_heads, block.attn.head_dim
    B, L, _ = x.shape
    y, ys = block.norm1(x), block.norm1(src)
    out = x.clone()
    for b in range(B):
        for i in range(L):
            if not enter[b, i]:
                continue
            keys = [j for j in range(L) if mask[b, j] and (key_ok[b, j] or j == i)
                    and (not causal or j <= i)]
            q = attn.q(y[b, i]).view(H, hd)
            heads = []
            for hh in range(H):
                kvs = [attn.kv(ys[b, j]).view(2, H, hd)[:, hh] for j in keys]
                w = torch.softmax(torch.stack([q[hh] @ kv[0] for kv in kvs]) / math.sqrt(hd), 0)
                heads.append(sum(wj * kv[1] for wj, kv in zip(w, kvs)))
            h1 = x[b, i] + attn.o(torch.cat(heads))
            full = h1 + block.ffn(block.norm2(h1))
            out[b, i] = x[b, i] + weight[b, i] * (full - x[b, i])
    return out


def slow_forward(model, tokens, mask):
    """The MoR model by its definition: who takes each recursion, the weighted update, the
    keys/values of each option → logits [B, L, V] and steps [B, L]."""
    policy, causal = model.policy, model.cfg.causal
    ctx = AttnContext.build(mask, causal=causal)
    h0 = model.prelude(model.embed(tokens), ctx)
    block = model.core.blocks[0]
    h, steps = h0, torch.zeros_like(mask, dtype=torch.long)
    if policy.name == "mor_token":
        probs = torch.softmax(policy.router(h0), -1)
        depth = probs.argmax(-1) + 1
        gate = probs.gather(-1, (depth - 1)[..., None]).squeeze(-1)
    run = mask.clone()
    w = (policy.knobs.alpha * torch.sigmoid(policy.routers[0](h0).squeeze(-1))
         if policy.name == "mor_expert" else gate)
    for r in range(1, N + 1):
        if policy.name == "mor_token":
            run = mask & (depth >= r)
        shared = policy.knobs.kv == "share_first"
        h = slow_block(block, h, h0 if shared else h, mask, run, w,
                       mask if shared else run, causal)
        steps += run.long()
        if policy.name == "mor_expert" and r < N:
            s = policy.routers[r](h).squeeze(-1)
            w = policy.knobs.alpha * torch.sigmoid(s)
            nxt = torch.zeros_like(run)
            for b in range(mask.shape[0]):
                cap = policy.capacity(r + 1, N)
                k = min(max(1, math.ceil(round(cap * int(mask[b].sum()), 9))), int(run[b].sum()))
                cands = [i for i in range(mask.shape[1]) if run[b, i]]
                for i in sorted(cands, key=lambda i: (-float(s[b, i].detach()), i))[:k]:
                    nxt[b, i] = True
            run = nxt
    return model.readout(h, ctx), steps


CASES = [(name, kv, causal) for name in ("mor_expert", "mor_token")
         for kv in ("recursion", "share_first") for causal in (False, True)
         if not (name == "mor_expert" and causal)]


@pytest.mark.parametrize("execution", ["dense", "compact"])
@pytest.mark.parametrize("name,kv,causal", CASES)
def test_mor_equals_slow_loop(name, kv, causal, execution):
    model = build(name, kv=kv, causal=causal, execution=execution)
    tokens, mask = batch()
    out = model(tokens, mask)
    ref, steps = slow_forward(model, tokens, mask)
    assert torch.equal(out.steps, steps)
    assert len(torch.unique(steps[mask])) >= 2  # tokens really took different depths
    torch.testing.assert_close(out.logits[mask], ref[mask], atol=1e-10, rtol=1e-10)
    R = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    R = R * mask[..., None]
    params = [p for p in model.parameters()]
    fast_g = torch.autograd.grad((out.logits * R).sum(), params, allow_unused=True)
    slow_g = torch.autograd.grad((ref * R).sum(), params, allow_unused=True)
    for p, a, b in zip(params, fast_g, slow_g):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    # the router is on the gradient path
    assert any(g is not None and bool(g.abs().sum() > 0)
               for g in fast_g[-len(list(model.policy.parameters())):])


@pytest.mark.parametrize("schedule,expected", [("linear", [1.0, 0.75, 0.5, 0.25]),
                                               ("geometric", [1.0, 0.5, 0.25, 0.125])])
def test_expert_choice_capacity_schedule(schedule, expected):
    """Each sequence sends ⌈c_r·n⌉ of its n real tokens through recursion r (one-way)."""
    model = build("mor_expert", kv="recursion", schedule=schedule).eval()
    tokens = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        steps = model(tokens).steps
    for r, c in enumerate(expected, 1):
        assert (steps >= r).sum(1).tolist() == [max(1, math.ceil(c * 16 - 1e-9))] * 2


def test_token_choice_balancing_loss_by_hand():
    model = build("mor_token", kv="recursion", balance=0.5)
    tokens, mask = batch()
    out = model(tokens, mask)
    ctx = AttnContext.build(mask, causal=False)
    probs = torch.softmax(model.policy.router(model.prelude(model.embed(tokens), ctx)), -1)
    real = probs[mask]
    frac = torch.stack([(real.argmax(-1) == d).double().mean() for d in range(N)])
    expected = 0.5 * N * (frac * real.mean(0)).sum()
    torch.testing.assert_close(out.aux_loss, expected)
    assert torch.equal(out.steps[mask], real.argmax(-1) + 1)


def test_refused_where_it_does_not_apply():
    cfg = ModelConfig(kind="recurrent", d_model=16, n_heads=2, causal=True)
    with pytest.raises(ConfigError, match="not causal"):
        models.build(cfg, policies.get("mor_expert"), vocab_size=V)
    with pytest.raises(ConfigError, match="does not support"):
        models.build(ModelConfig(kind="stacked", d_model=16, n_heads=2), policies.get("mor_token"),
                     vocab_size=V)
    for bad in ({"kv": "nope"}, {"schedule": "cosine"}, {"decay": 0.0}):
        with pytest.raises(ConfigError):
            policies.get("mor_expert", **bad)
    model = build("mor_token", kv="recursion")
    with pytest.raises(ConfigError, match="cannot run"):
        model(torch.zeros(1, 3, dtype=torch.long), steps=N + 2)


@pytest.mark.parametrize("name,kv,causal", CASES)
def test_mor_inference_compact_equals_dense(name, kv, causal):
    """Without autograd (the compacted stepper's in-place buffers; float32, the compiled
    kernels where they build) the compacted model answers as the dense reference."""
    dense = build(name, kv=kv, causal=causal).float().eval()
    comp = build(name, kv=kv, causal=causal, execution="auto").float().eval()
    comp.load_state_dict(dense.state_dict())
    tokens, mask = batch()
    with torch.no_grad():
        a, b = dense(tokens, mask), comp(tokens, mask)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(b.logits[mask], a.logits[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.flops, a.flops)
