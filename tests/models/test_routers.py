"""The registered block routers against slow per-token loops (float64, pads, causal and not,
dense and compacted execution, forward and gradients): Mixture-of-Depths' top-k and its two
causal inference rules, the skip router, and participation that is not one-way."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ponder.models as models
from ponder.errors import ConfigError
from ponder.models.compact import CompactStepper
from ponder.models.config import ModelConfig, RouterConfig
from ponder.models.engine import Engine
from ponder.models.layers import AttnContext
from ponder.policies.fixed import Fixed
from tests.references import slow_block

V = 13


def make(router: str, *, causal: bool, knobs: dict | None = None, kind: str = "stacked",
         layers: int = 4, core: int = 1, every: int = 1, execution: str = "dense",
         positions: str = "rotary", seed: int = 0):
    cfg = ModelConfig(kind=kind, d_model=16, n_heads=2, d_ff=32, prelude=1, core=core, coda=1,
                      max_steps=layers, causal=causal, positions=positions, execution=execution,
                      router=RouterConfig(kind=router, knobs=knobs or {}, every=every))
    torch.manual_seed(seed)
    model = models.build(cfg, Fixed(), vocab_size=V)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a spread of router scores (ties and all-equal gates are no test)
        for name, p in model.named_parameters():
            if "router.score" in name:
                p.normal_(0.0, 1.5, generator=g)
    return model


def inputs(B: int = 3, L: int = 9, D: int = 16, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 4:] = False
    return x, mask, g


# -- slow references (the routed block: tests/references.py) ----------------------------
def slow_top_k(score, candidates, capacity):
    """Per sequence: the ⌈capacity·n⌉ candidates of highest score (earlier first on ties)."""
    enter = torch.zeros_like(candidates)
    for b in range(score.shape[0]):
        cands = [i for i in range(score.shape[1]) if candidates[b, i]]
        if not cands:
            continue
        k = max(1, math.ceil(round(capacity * len(cands), 9)))
        for i in sorted(cands, key=lambda i: (-float(score[b, i].detach()), i))[:k]:
            enter[b, i] = True
    return enter


def run_block(model, layer: int, x, mask, active, *, compact: bool):
    """One routed layer of a stacked model on x, by the engine (dense) or the compact stepper."""
    ctx = AttnContext.build(mask, causal=model.cfg.causal, rope=None)
    if compact:
        stepper = CompactStepper(core=model.core_group, step_embedding=None, ctx=ctx, mask=mask,
                                 max_steps=model.cfg.max_steps)
        return stepper.step(layer, x, active), ctx
    engine = Engine(policy=model.policy, max_steps=model.cfg.max_steps, core=model.core_group)
    return engine.run_step(layer, x, active, ctx), ctx


def grads_of(model, out, R, x):
    params = [p for p in model.parameters()]
    gs = torch.autograd.grad((out * R).sum(), params + [x], allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params + [x], gs)]


# -- Mixture-of-Depths ------------------------------------------------------------------
@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("capacity", [0.125, 0.5])
@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "even"])
def test_mod_block_equals_per_token_loop(ragged, capacity, causal, compact):
    """Training routing (top-k by the router score, attention among the routed tokens, σ(r)
    on the update): forward and gradients of every weight and of the input, and the BCE aux
    term, against the loop. ``ragged``: pads, and some real tokens are not candidates (a
    policy froze them), so sequences route different counts; ``even``: every sequence routes
    the same count (the compacted path's unmasked grid)."""
    model = make("mod", causal=causal, knobs={"capacity": capacity}).double().train()
    block = model.layers[0].blocks[0]
    x, mask, g = inputs()
    x.requires_grad_(True)
    if ragged:
        active = mask & (torch.rand(mask.shape, generator=g) < 0.85)
    else:
        mask = torch.ones_like(mask)
        active = mask
    fast, ctx = run_block(model, 1, x, mask, active, compact=compact)

    r = block.router.score(x).squeeze(-1)
    enter = slow_top_k(r, active, capacity)
    slow = slow_block(block, x, mask, enter, torch.sigmoid(r), causal=causal, routed_keys=True)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-10)
    R = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for a, b in zip(grads_of(model, fast, R, x), grads_of(model, slow, R, x)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    # the predictor's BCE against top-k membership, averaged over the candidates
    p = block.router.predictor(x.detach()).squeeze(-1)
    bce = [F.binary_cross_entropy_with_logits(p[b, i], enter[b, i].double())
           for b in range(x.shape[0]) for i in range(x.shape[1]) if active[b, i]]
    torch.testing.assert_close(ctx.aux["mod_predictor_bce"], 0.01 * torch.stack(bce).mean())
    assert ctx.stats["mod_entered"][0] == pytest.approx(float(enter.sum()) / float(active.sum()))


def test_mod_capacity_is_exact_in_training():
    """Every sequence routes exactly ⌈capacity·n⌉ of its n running tokens (pads never)."""
    model = make("mod", causal=True, knobs={"capacity": 0.3}).double().train()
    x, mask, _ = inputs(L=20)
    route = model.layers[0].blocks[0].router(x, mask, AttnContext.build(mask, causal=True))
    n = mask.sum(1)
    assert route.enter.sum(1).tolist() == [math.ceil(0.3 * int(k) - 1e-9) for k in n]
    assert not bool((route.enter & ~mask).any())


@pytest.mark.parametrize("rule", ["predictor", "aux_loss"])
@pytest.mark.parametrize("execution", ["dense", "auto"])
def test_mod_causal_decoding_routes_as_full_forward(rule, execution):
    """A causal model at inference: forwarding every prefix of a sequence gives, at its last
    position, the routing decisions and logits of the full forward, and those decisions are
    the causal rule's (predictor logit > 0, or router logit > 0). Top-k (training) does not
    pass this test: the check can fail."""
    model = make("mod", causal=True, knobs={"causal_rule": rule, "capacity": 0.25}, layers=4,
                 every=2, execution=execution).eval()
    routers = [m for m in model.modules() if getattr(m, "name", "") == "mod"]
    assert len(routers) == 2
    seen: list = []
    hooks = [r.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out.enter)))
             for r in routers]
    g = torch.Generator().manual_seed(4)
    L = 12
    tokens = torch.randint(0, V, (2, L), generator=g)

    def decisions(toks):
        seen.clear()
        out = model(toks)
        return out, [e.clone() for _, _, e in seen], list(seen)

    with torch.no_grad():
        full, full_enter, calls = decisions(tokens)
        # the decisions are the causal rule's
        for mod, x, enter in calls:
            logit = mod.predictor(x).squeeze(-1) if rule == "predictor" else mod.score(x).squeeze(-1)
            assert torch.equal(enter, logit > 0)
        assert 0 < sum(int(e.sum()) for e in full_enter) < sum(e.numel() for e in full_enter)
        for t in range(1, L + 1):
            out, enter, _ = decisions(tokens[:, :t])
            for e_prefix, e_full in zip(enter, full_enter):
                assert torch.equal(e_prefix[:, t - 1], e_full[:, t - 1])
            torch.testing.assert_close(out.logits[:, t - 1], full.logits[:, t - 1], atol=1e-5, rtol=1e-5)
        # training routes by top-k over the sequence: prefixes decide differently
        model.train()
        _, full_enter, _ = decisions(tokens)
        differs = False
        for t in range(2, L):
            _, enter, _ = decisions(tokens[:, :t])
            differs |= any(not torch.equal(a[:, t - 1], b[:, t - 1]) for a, b in zip(enter, full_enter))
    for h in hooks:
        h.remove()
    assert differs


@pytest.mark.parametrize("rule", ["predictor", "aux_loss"])
def test_mod_causal_rules_gradients(rule):
    """``predictor``: the predictor learns from its BCE only (detached inputs: the task loss
    never reaches it, its BCE never reaches the router); ``aux_loss``: the BCE trains the
    router."""
    model = make("mod", causal=True, knobs={"causal_rule": rule}, every=2).train()
    tokens = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(3))
    out = model(tokens)
    name = "mod_predictor_bce" if rule == "predictor" else "mod_router_bce"
    assert set(out.aux_terms) == {name}
    task, _ = model.policy.loss(out, targets)
    named = dict(model.named_parameters())
    router_score = [n for n in named if n.endswith("router.score.weight")]
    predictor = [n for n in named if ".router.predictor." in n]
    assert (len(predictor) > 0) == (rule == "predictor")
    g_task = dict(zip(named, torch.autograd.grad(task, list(named.values()), allow_unused=True,
                                                 retain_graph=True)))
    g_aux = dict(zip(named, torch.autograd.grad(out.aux_terms[name], list(named.values()),
                                                allow_unused=True)))
    for n in predictor:
        assert g_task[n] is None or not bool(g_task[n].any())
        assert g_aux[n] is not None and bool(g_aux[n].any())
    for n in router_score:
        assert g_task[n] is not None and bool(g_task[n].any())  # the weight σ(r) on the path
        reached = g_aux[n] is not None and bool(g_aux[n].any())
        assert reached == (rule == "aux_loss")


def test_mod_training_runs_the_block_on_routed_tokens_only():
    """With ``execution: auto`` a model with routers trains compacted: the routed block's
    projections and FFN see the entering rows only (⌈capacity·L⌉ per sequence), not B·L."""
    model = make("mod", causal=True, knobs={"capacity": 0.125}, layers=2, every=2,
                 execution="auto").train()
    block = model.layers[1].blocks[0]
    rows: dict[str, int] = {}
    hooks = [block.ffn.register_forward_hook(lambda m, a, o: rows.__setitem__("ffn", a[0].shape[0])),
             block.attn.q.register_forward_hook(lambda m, a, o: rows.__setitem__("q", a[0].shape[0])),
             block.attn.kv.register_forward_hook(lambda m, a, o: rows.__setitem__("kv", a[0].shape[0]))]
    tokens = torch.randint(0, V, (4, 32), generator=torch.Generator().manual_seed(1))
    model.loss(model(tokens), tokens)[0].backward()
    for h in hooks:
        h.remove()
    assert rows == {"ffn": 4 * 4, "q": 4 * 4, "kv": 4 * 4}


# -- skip router and participation that is not one-way -------------------------------------
@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_skip_group_equals_per_token_loop(causal, compact):
    """A core group of three skip-routed blocks against the loop (gate > ½ runs the block,
    x + g·(block(x) − x), skipped tokens stay keys/values); some token skips block i and runs
    block i+1 (participation is not one-way), forward and gradients, dense and compact."""
    model = make("skip", causal=causal, kind="recurrent", layers=2, core=3).double().train()
    group = model.core
    x, mask, g = inputs(L=10)
    x.requires_grad_(True)
    active = mask & (torch.rand(mask.shape, generator=g) < 0.9)
    ctx = AttnContext.build(mask, causal=causal)
    if compact:
        stepper = CompactStepper(core=lambda n: group, step_embedding=None, ctx=ctx, mask=mask,
                                 max_steps=2)
        fast = stepper.step(1, x, active)
    else:
        engine = Engine(policy=model.policy, max_steps=2, core=lambda n: group)
        fast = engine.run_step(1, x, active, ctx)
    h = x
    entered = []
    cost = 0.0
    for block in group.blocks:
        gate = torch.sigmoid(block.router.score(h).squeeze(-1))
        enter = (gate > 0.5) & active
        entered.append(enter)
        cost = cost + 0.01 * gate[active].mean()
        h = slow_block(block, h, mask, enter, gate, causal=causal, routed_keys=False)
    torch.testing.assert_close(fast, h, atol=1e-10, rtol=1e-10)
    R = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for a, b in zip(grads_of(model, fast, R, x), grads_of(model, h, R, x)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ctx.aux["skip_cost"], cost)
    back_in = any(bool((~entered[i] & entered[i + 1] & active).any()) for i in range(2))
    skipped = any(bool((~e & active).any()) for e in entered)
    assert back_in and skipped


def test_skip_router_saves_flops_and_reenters_across_steps():
    """Over the steps of a recurrent core, a token skipped at step n may run at step n+1; the
    FLOPs per token count exactly the blocks each token entered, plus the router's score at
    every step (it scores every running token)."""
    model = make("skip", causal=False, kind="recurrent", layers=4, core=1, positions="none").eval()
    block = model.core.blocks[0]
    log: list = []
    hook = block.router.register_forward_hook(lambda m, a, o: log.append(o.enter.clone()))
    tokens = torch.randint(0, V, (3, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(tokens)
    hook.remove()
    entered = torch.stack(log)  # [steps, B, L]
    assert len(log) == 4
    assert bool((~entered[:-1] & entered[1:]).any())  # skipped, then back in
    L = tokens.shape[1]
    fixed = block.flops_per_token(float(L))
    plain = 2 * (model.prelude.blocks[0].flops_per_token(float(L))) + 2.0 * 16 * V
    expected = plain + entered.sum(0).double() * fixed + 4 * 2.0 * 16
    torch.testing.assert_close(out.flops, expected)


# -- knobs and catalogue -----------------------------------------------------------------
@pytest.mark.parametrize("router,knobs", [("mod", {"capacity": 0.0}), ("mod", {"capacity": 1.5}),
                                          ("mod", {"causal_rule": "oracle"}),
                                          ("mod", {"weight": "softmax"}),
                                          ("skip", {"threshold": 2.0}), ("skip", {"nope": 1})])
def test_bad_router_knobs(router, knobs):
    with pytest.raises(ConfigError, match=r"model\.router\.knobs|has no knob"):
        make(router, causal=False, knobs=knobs)


@pytest.mark.parametrize("execution", ["dense", "auto"])
def test_mod_flops_known_answer(execution):
    """FLOPs per token of a Mixture-of-Depths layer: the router (and predictor) on every
    token, the block only for the k entering ones, with the k routed tokens as keys."""
    model = make("mod", causal=False, knobs={"capacity": 0.25}, layers=2, every=2,
                 positions="none", execution=execution).eval()
    tokens = torch.randint(0, V, (3, 8), generator=torch.Generator().manual_seed(6))
    seen: list = []
    router = model.layers[1].blocks[0].router
    hook = router.register_forward_hook(lambda m, a, o: seen.append(o.enter))
    with torch.no_grad():
        flops = model(tokens).flops
    hook.remove()
    enter = seen[0]
    assert enter.sum(1).tolist() == [2, 2, 2]
    d, d_ff, L = 16, 32, 8
    block = lambda keys: 8.0 * d * d + 4.0 * d * d_ff + 4.0 * d * keys
    scorer = 2.0 * d + 4.0 * d * (d // 8)
    expected = 3 * block(L) + 2.0 * d * V + scorer + enter.double() * block(2)
    torch.testing.assert_close(flops, expected)


# -- the command line ----------------------------------------------------------------------
TINY = ["task.name=list_rank", "task.knobs.m_min=2", "task.knobs.m_max=4", "task.knobs.ood_m_min=5",
        "task.knobs.ood_m_max=6", "task.knobs.n_labels=8", "model.positions=none",
        "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.max_steps=2",
        "model.core=2", "run.batch_size=4", "run.valid_batches=1", "schedule.warmup=1",
        "run.steps=2", "run.eval_every=2", "run.ckpt_every=2", "run.threads=1"]


@pytest.mark.parametrize("bad", ["model.router.knobs={capacity: 2.0}",
                                 "model.router.knobs={causal_rule: oracle}",
                                 "model.router.kind=nope"])
def test_train_cli_refuses_bad_router_config(tmp_path, capsys, bad):
    from ponder.cli import main
    args = ["train", *TINY, "model.router.kind=mod", bad, "--out", str(tmp_path / "r"),
            "--progress", "none"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ponder: error:")


def test_train_cli_trains_a_routed_model(tmp_path):
    from ponder.cli import main
    out = tmp_path / "r"
    assert main(["train", *TINY, "model.router.kind=mod", "model.router.every=2",
                 "--out", str(out), "--progress", "none"]) == 0
    assert (out / "result.json").exists()


@pytest.mark.parametrize("what,kinds", [("router", ("mod", "skip")), ("ffn", ("colt5",))])
def test_cli_lists_the_new_kinds(what, kinds, capsys):
    from ponder.cli import main
    assert main([what, "list"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in kinds)
