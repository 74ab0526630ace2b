"""Every registered FFN kind, attention kind and block router — and toy kinds registered here,
one class + one registration each, touching no other file — run through dense and compacted
execution with equal outputs, FLOPs and gradients; the routed block equals a slow per-token
loop; the registries refuse bad names and knobs."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ponder.models as models
from ponder.errors import ConfigError
from ponder.models.config import KindConfig, ModelConfig, RouterConfig
from ponder.models.kinds import ATTENTIONS, FFNS, ROUTERS
from ponder.models.layers import FFN, AttnContext, Route, Router
from ponder.policies.scripted import ScriptedPolicy
from ponder.tasks.base import knob
from ponder.tasks.batching import IGNORE_INDEX
from tests.references import slow_block

V, N, TOL = 11, 5, 1e-5


# -- toy kinds: what a contributor writes (one class + registration each) -------------------
@dataclasses.dataclass(frozen=True)
class SquaredKnobs:
    weight: float = knob(0.1, lo=0.0, hi=10.0, help="weight of the toy aux loss")


class SquaredReLU(FFN):
    """Toy FFN kind: down(relu(up x)²), emitting an aux loss through the per-forward context."""

    name = "toy_squared"
    Knobs = SquaredKnobs

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.weight = (knobs or SquaredKnobs()).weight

    def forward(self, x, ctx=None, rows=None):
        a = F.relu(self.up(x)).pow(2)
        if ctx is not None:
            w = ctx.row_weight(rows, x.shape[0], x.dtype)  # the rows that really enter
            ctx.add_aux("toy_activation", self.weight * (a.mean(-1) * w).sum() / w.sum().clamp(min=1))
        return self.down(a)

    def flops_per_token(self) -> float:
        return 4.0 * self.up.in_features * self.up.out_features


class OddPositionsCost(SquaredReLU):
    """Toy kind whose cost depends on the row: tokens at odd positions run a second matrix.
    (Their extra FLOPs go through ``ctx.count_row_flops``, as an MoE's experts would.)"""

    name = "toy_odd_cost"
    EXTRA = 100.0

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__(d_model=d_model, d_ff=d_ff, dropout=dropout, knobs=knobs)
        self.extra = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, ctx=None, rows=None):
        L = ctx.key_mask.shape[1]
        index = rows if rows is not None else torch.arange(x.shape[0])
        odd = (index % L) % 2 == 1
        ctx.count_row_flops(rows, odd.to(x.dtype) * self.EXTRA)
        return super().forward(x, ctx, rows) + odd[:, None] * self.extra(x)


class ScoreRouter(Router):
    """Toy router: a token enters when a linear score of its state is positive; its update is
    scaled by sigmoid(score) (the router on the gradient path)."""

    name = "toy_score"

    def __init__(self, *, d_model: int, knobs: Any = None) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, x, candidates, ctx):
        s = self.score(x).squeeze(-1)
        return Route(enter=(s > 0) & candidates, weight=torch.sigmoid(s))


class RoutedKeysRouter(ScoreRouter):
    """The same pick; attention among the entering tokens only (Mixture-of-Depths style)."""

    name = "toy_routed_keys"
    keys = "routed"


@pytest.fixture(autouse=True)
def toys():
    FFNS.register(SquaredReLU)
    FFNS.register(OddPositionsCost)
    ROUTERS.register(ScoreRouter)
    ROUTERS.register(RoutedKeysRouter)
    yield
    FFNS.unregister(SquaredReLU.name)
    FFNS.unregister(OddPositionsCost.name)
    ROUTERS.unregister(ScoreRouter.name)
    ROUTERS.unregister(RoutedKeysRouter.name)


def kinds_to_run() -> list[tuple[str, str, str]]:
    """(ffn, attention, router) triples: every registered kind once, plus the toys."""
    ffns = sorted(set(FFNS.names()) | {"toy_squared", "toy_odd_cost"})
    attns = ATTENTIONS.names()
    routers = ["none"] + sorted(set(ROUTERS.names()) | {"toy_score", "toy_routed_keys"})
    out = [(f, "standard", "none") for f in ffns]
    out += [("dense", a, "none") for a in attns if a != "standard"]
    out += [("dense", "standard", r) for r in routers if r != "none"]
    out += [("toy_squared", "standard", "toy_score")]
    return out


def build(ffn: str, attn: str, router: str, *, kind: str, causal: bool, execution: str):
    g = torch.Generator().manual_seed(5)
    steps = torch.randint(1, N + 1, (4, 9), generator=g)
    cfg = ModelConfig(kind=kind, d_model=16, n_heads=2, d_ff=32, prelude=1, core=2, coda=1,
                      max_steps=N, causal=causal, positions="rotary", execution=execution,
                      ffn=KindConfig(kind=ffn), attention=KindConfig(kind=attn),
                      router=RouterConfig(kind=router))
    torch.manual_seed(0)
    model = models.build(cfg, ScriptedPolicy(steps=steps), vocab_size=V)
    with torch.no_grad():  # routers: a spread of scores, so some tokens enter and some do not
        for name, p in model.named_parameters():
            if "router.score" in name:
                p.normal_(0.0, 2.0, generator=g)
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 4:] = False
    targets = torch.randint(0, V, (4, 9), generator=g).masked_fill(~mask, IGNORE_INDEX)
    return tokens, mask, targets


def twin(model, execution: str):
    other = copy.deepcopy(model)
    other.cfg = dataclasses.replace(model.cfg, execution=execution)
    return other


def runs_causal(kinds: tuple[str, str, str]) -> bool:
    """Whether every kind of the triple may run in a causal model (a non-causal one is
    refused there: test_non_causal_kind_is_refused_by_a_causal_model; the toys are causal)."""
    regs = ((FFNS, kinds[0]), (ATTENTIONS, kinds[1]), (ROUTERS, kinds[2]))
    return all(n == "none" or n.startswith("toy_") or reg.cls(n).causal for reg, n in regs)


CASES = [(k, kind, causal) for k in kinds_to_run() for kind in ("recurrent", "stacked")
         for causal in (False, True) if not causal or runs_causal(k)]


@pytest.mark.parametrize("kinds,kind,causal", CASES,
                         ids=[f"{'-'.join(k)}-{kind}-{'causal' if c else 'bidir'}" for k, kind, c in CASES])
def test_every_kind_compact_equals_dense(kinds, kind, causal):
    dense = build(*kinds, kind=kind, causal=causal, execution="dense")
    comp = twin(dense, "compact")
    tokens, mask, targets = batch()
    # inference: logits, steps, FLOPs per token, aux terms
    dense.eval(), comp.eval()
    with torch.no_grad():
        a, b = dense(tokens, mask), comp(tokens, mask)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(b.logits[mask], a.logits[mask], atol=TOL, rtol=TOL)
    torch.testing.assert_close(b.flops, a.flops)
    assert a.aux_terms.keys() == b.aux_terms.keys()
    for key in a.aux_terms:
        torch.testing.assert_close(b.aux_terms[key], a.aux_terms[key], atol=TOL, rtol=TOL)
    # training: loss and every gradient
    dense.train(), comp.train()
    grads, losses = [], []
    for model in (dense, comp):
        out = model(tokens, mask)
        loss, stats = model.loss(out, targets)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if kinds[0] == "toy_squared":
            assert stats["aux/toy_activation"] > 0  # the kind's aux loss reached model.loss
    torch.testing.assert_close(losses[1], losses[0], atol=TOL, rtol=TOL)
    # a block nobody entered gets no gradient in compact mode and a zero one in dense mode
    params = dict(dense.named_parameters())
    for name in grads[0].keys() | grads[1].keys():
        zero = torch.zeros_like(params[name])
        torch.testing.assert_close(grads[1].get(name, zero), grads[0].get(name, zero),
                                   atol=TOL, rtol=1e-4, msg=name)
    if kinds[2] != "none":
        # the router is on the gradient path (its weight scales the update)
        assert any("router" in n and g.abs().sum() > 0 for n, g in grads[0].items())


def test_routing_changes_compute_and_result():
    """A router really skips tokens: fewer FLOPs than the same model without the router."""
    routed = build("dense", "standard", "toy_score", kind="recurrent", causal=False, execution="dense").eval()
    plain = build("dense", "standard", "none", kind="recurrent", causal=False, execution="dense").eval()
    tokens, mask, _ = batch()
    with torch.no_grad():
        fr, fp = routed(tokens, mask).flops[mask], plain(tokens, mask).flops[mask]
    assert bool((fr <= fp + 1e-6).all()) and bool((fr < fp).any())


# -- the routed block against a slow loop over tokens -------------------------------------
@pytest.mark.parametrize("router", ["toy_score", "toy_routed_keys"])
@pytest.mark.parametrize("causal", [False, True])
def test_routed_block_equals_per_token_loop(router, causal):
    model = build("dense", "standard", router, kind="recurrent", causal=causal, execution="dense").double()
    block = model.core.blocks[1]  # every core block carries the router (router.every = 1)
    assert block.router is not None
    g = torch.Generator().manual_seed(9)
    B, L, D = 3, 7, 16
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[2, 5:] = False
    active = mask & (torch.rand(B, L, generator=g) < 0.8)
    ctx = AttnContext.build(mask, causal=causal)
    from ponder.models.engine import Engine
    engine = Engine(policy=model.policy, max_steps=N, core=model.core_group)
    fast = engine.apply_block(block, x, active, ctx)

    # slow: per token, by the definitions
    score = block.router.score(x).squeeze(-1)
    enter = (score > 0) & active
    ref = slow_block(block, x, mask, enter, torch.sigmoid(score), causal=causal,
                     routed_keys=router == "toy_routed_keys")
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)


# -- registries and config ---------------------------------------------------------------
def test_bad_kinds_and_knobs_are_refused():
    for field, value in (("ffn", KindConfig(kind="nope")), ("attention", KindConfig(kind="nope")),
                         ("router", RouterConfig(kind="nope")),
                         ("ffn", KindConfig(kind="toy_squared", knobs={"weight": -1.0})),
                         ("ffn", KindConfig(kind="toy_squared", knobs={"nope": 1})),
                         ("router", RouterConfig(kind="none", knobs={"x": 1})),
                         ("router", RouterConfig(kind="toy_score", every=0))):
        cfg = dataclasses.replace(ModelConfig(d_model=16, n_heads=2), **{field: value})
        with pytest.raises(ConfigError):
            models.build(cfg, ScriptedPolicy(steps=2), vocab_size=V)


def test_non_causal_kind_is_refused_by_a_causal_model():
    class Pooled(SquaredReLU):
        name = "toy_pooled"
        causal = False

    FFNS.register(Pooled)
    try:
        cfg = ModelConfig(d_model=16, n_heads=2, causal=True, ffn=KindConfig(kind="toy_pooled"))
        with pytest.raises(ConfigError, match="not causal"):
            models.build(cfg, ScriptedPolicy(steps=2), vocab_size=V)
    finally:
        FFNS.unregister("toy_pooled")


def test_router_every_places_routers():
    cfg = ModelConfig(kind="stacked", d_model=16, n_heads=2, max_steps=4, core=1,
                      router=RouterConfig(kind="toy_score", every=2))
    model = models.build(cfg, ScriptedPolicy(steps=2), vocab_size=V)
    assert [layer.blocks[0].router is not None for layer in model.layers] == [False, True, False, True]
    assert model.prelude.blocks[0].router is None


@pytest.mark.parametrize("what", ["ffn", "attention", "router"])
def test_cli_lists_the_registries(what):
    out = subprocess.run([sys.executable, "-m", "ponder", what, "list"], capture_output=True,
                         text=True, check=True).stdout
    expected = {"ffn": "dense", "attention": "standard", "router": "none"}[what]
    assert expected in out


def test_row_dependent_flops_known_answer():
    """A kind's per-row FLOPs (``ctx.count_row_flops``) add up per block a token enters, in
    dense and compacted execution alike; frozen tokens, which a dense pass computes anyway,
    are not charged."""
    tokens, mask, _ = batch()
    plain = build("toy_squared", "standard", "none", kind="recurrent", causal=False, execution="dense")
    steps = plain.policy.steps
    for execution in ("dense", "compact"):
        odd = build("toy_odd_cost", "standard", "none", kind="recurrent", causal=False,
                    execution=execution).eval()
        with torch.no_grad():
            extra = odd(tokens, mask).flops - plain.eval()(tokens, mask).flops
        blocks = 1 + 1 + odd.cfg.core * steps.clamp(max=N)  # prelude + coda + core × steps
        position_odd = (torch.arange(tokens.shape[1]) % 2 == 1).double()
        torch.testing.assert_close(extra, OddPositionsCost.EXTRA * blocks * position_odd * mask)


@pytest.mark.parametrize("causal", [False, True])
def test_flops_per_token_known_answer(causal):
    """A fixed-depth model's counted FLOPs are the block formula: (P + C + N·G)·block(keys)
    + 2·d·V, with keys = the sequence's real tokens (or the positions up to the query)."""
    d, d_ff, P, G, C = 16, 32, 1, 2, 1
    cfg = ModelConfig(d_model=d, n_heads=2, d_ff=d_ff, prelude=P, core=G, coda=C, max_steps=N,
                      causal=causal, positions="none")
    model = models.build(cfg, ScriptedPolicy(steps=N), vocab_size=V).eval()
    tokens, mask, _ = batch()
    with torch.no_grad():
        flops = model(tokens, mask).flops
    keys = mask.cumsum(1) if causal else mask.sum(1, keepdim=True).expand_as(mask)
    block = 8.0 * d * d + 4.0 * d * d_ff + 4.0 * keys.double() * d
    expected = ((P + C + N * G) * block + 2.0 * d * V) * mask
    torch.testing.assert_close(flops, expected)
    # halting early saves exactly the skipped steps' blocks
    steps = torch.randint(1, N + 1, mask.shape, generator=torch.Generator().manual_seed(2))
    model.policy.steps = steps
    with torch.no_grad():
        out = model(tokens, mask)
    saved = ((N - out.steps) * G * block) * mask
    torch.testing.assert_close(out.flops, expected - saved)
