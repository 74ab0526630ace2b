"""The routed mixture-of-experts FFN kinds against slow references written from their
definitions (Python loops over tokens and experts), float64, with pads and frozen rows:
forward and gradients, in dense execution (every row, ``rows=None``) and compacted execution
(the entering rows only, in shuffled order). Capacity drops, the load-balance loss on a
hand-computed case, FLOPs of the experts really evaluated, the sorted dispatch, and the
non-causal kinds refused by a causal model (one line, exit 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ponder.cli import main
from ponder.models.experts.dispatch import ExpertBank
from ponder.models.kinds import FFNS
from ponder.models.layers import AttnContext

B, L, D, D_FF = 3, 6, 8, 12
KINDS = ["switch", "topk", "hash", "sigma_moe", "expert_choice", "soft_moe"]


def expert(bank: ExpertBank, e: int, v: torch.Tensor) -> torch.Tensor:
    """Expert e on one row v [D], by its formula."""
    return F.gelu(v @ bank.w1[e] + bank.b1[e]) @ bank.w2[e] + bank.b2[e]


def py_mix(v: int, seed: int) -> int:
    """The hash of ``ponder.models.experts.hashed`` in plain Python integers."""
    m = 0xFFFFFFFF
    v = (v + seed * 0x9E3779B9) & m
    for _ in range(2):
        v = ((v ^ (v >> 16)) * 0x45D9F3B) & m
    return v ^ (v >> 16)


def setup(seed: int = 0):
    """x [B·L, D] float64, the context (pads at the end of two sequences) and the entering
    mask (pads and a few frozen tokens do not enter)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B * L, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 5:] = False
    enter = mask & (torch.rand(B, L, generator=g) < 0.85)
    ctx = AttnContext.build(mask, causal=False)
    ctx.tokens = torch.randint(0, 50, (B, L), generator=g)
    ctx.set_entering(enter)
    return x, ctx, enter.reshape(-1)


def make(kind: str, **knobs):
    torch.manual_seed(3)
    cls = FFNS.cls(kind)
    ffn = cls(d_model=D, d_ff=D_FF, knobs=FFNS.knobs(kind, knobs)).double()
    with torch.no_grad():  # a spread of router scores, so routing is not near-uniform
        for name, p in ffn.named_parameters():
            if name.startswith("router"):
                p.mul_(3.0)
    return ffn


def order(enter: torch.Tensor) -> list[int]:
    """Entering flat indices in the priority order: position, then sequence."""
    return sorted((int(r) for r in enter.nonzero().view(-1)), key=lambda r: (r % L, r // L))


# -- the references ---------------------------------------------------------------------
def ref_token_choice(ffn, x, enter, *, k, normalise, sigmoid=False):
    """switch / topk / sigma_moe: each token's top-k experts; under a capacity, the pairs
    are admitted choice by choice, tokens in position-major order."""
    E, cf = ffn.n_experts, getattr(ffn.knobs, "capacity_factor", 0.0)
    toks = order(enter)
    cap = math.ceil(cf * len(toks) * k / E) if cf > 0 else None
    used = [0] * E
    out = [torch.zeros(D, dtype=x.dtype) for _ in range(x.shape[0])]
    picks = {}
    for t in toks:
        logits = ffn.router(x[t])
        p = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, 0)
        es = sorted(range(E), key=lambda e: -float(p[e].detach()))[:k]
        total = sum(p[e] for e in es)
        picks[t] = [(e, p[e] / total if normalise else p[e]) for e in es]
    dropped = []
    for j in range(k):
        for t in toks:
            e, g = picks[t][j]
            if cap is not None and used[e] >= cap:
                dropped.append(t)
                continue
            used[e] += 1
            out[t] = out[t] + g * expert(ffn.experts, e, x[t])
    return torch.stack(out), dropped


def ref_hash(ffn, x, enter, tokens):
    out = torch.zeros_like(x)
    for t in order(enter):
        e = py_mix(int(tokens.reshape(-1)[t]), ffn.knobs.seed) % ffn.n_experts
        out[t] = expert(ffn.experts, e, x[t])
    return out


def ref_expert_choice(ffn, x, enter):
    E, c = ffn.n_experts, ffn.knobs.capacity
    out = [torch.zeros(D, dtype=x.dtype) for _ in range(x.shape[0])]
    for b in range(B):
        toks = [b * L + i for i in range(L) if enter[b * L + i]]
        if not toks:
            continue
        S = {t: torch.softmax(ffn.router(x[t]), 0) for t in toks}
        k = min(math.ceil(c * len(toks) / E), len(toks))
        for e in range(E):
            for t in sorted(toks, key=lambda t: -float(S[t][e].detach()))[:k]:
                out[t] = out[t] + S[t][e] * expert(ffn.experts, e, x[t])
    return torch.stack(out)


def ref_soft_moe(ffn, x, enter):
    E, S = ffn.n_experts, ffn.n_slots
    phi = ffn.phi
    out = [torch.zeros(D, dtype=x.dtype) for _ in range(x.shape[0])]
    for b in range(B):
        toks = [b * L + i for i in range(L) if enter[b * L + i]]
        if not toks:
            continue
        logit = {(t, s): ffn.scale * (x[t] @ phi[:, s]) / (x[t].norm() * phi[:, s].norm())
                 for t in toks for s in range(E * S)}
        slot_out = []
        for s in range(E * S):
            z = sum(torch.exp(logit[t2, s]) for t2 in toks)
            slot_in = sum(torch.exp(logit[t, s]) / z * x[t] for t in toks)
            slot_out.append(expert(ffn.experts, s // S, slot_in))
        for t in toks:
            z = sum(torch.exp(logit[t, s]) for s in range(E * S))
            out[t] = sum(torch.exp(logit[t, s]) / z * slot_out[s] for s in range(E * S))
    return torch.stack(out)


def reference(kind, ffn, x, ctx, enter):
    if kind == "switch":
        return ref_token_choice(ffn, x, enter, k=1, normalise=False)[0]
    if kind == "topk":
        return ref_token_choice(ffn, x, enter, k=ffn.k, normalise=True)[0]
    if kind == "sigma_moe":
        return ref_token_choice(ffn, x, enter, k=ffn.k, normalise=False, sigmoid=True)[0]
    if kind == "hash":
        return ref_hash(ffn, x, enter, ctx.tokens)
    if kind == "expert_choice":
        return ref_expert_choice(ffn, x, enter)
    return ref_soft_moe(ffn, x, enter)


KNOBS = {"switch": [{}, {"capacity_factor": 0.0}, {"capacity_factor": 0.6}, {"shared": 1}],
         "topk": [{}, {"k": 3, "capacity_factor": 0.5}, {"capacity_factor": 0.0}],
         "hash": [{}, {"seed": 7, "n_experts": 3}],
         "sigma_moe": [{}, {"k": 3}],
         "expert_choice": [{}, {"capacity": 0.7}, {"capacity": 1.0, "n_experts": 2}],
         "soft_moe": [{}, {"slots": 2, "n_experts": 3}]}
CASES = [(kind, knobs) for kind in KINDS for knobs in KNOBS[kind]]


def fast(ffn, x, ctx, enter, compact: bool):
    """The kind's forward on every row (dense) or on the entering rows only, shuffled."""
    if not compact:
        return ffn(x, ctx, None)
    rows = enter.nonzero().view(-1)
    rows = rows[torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(4))]
    out = torch.zeros_like(x)
    return out.index_copy(0, rows, ffn(x.index_select(0, rows), ctx, rows))


@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
@pytest.mark.parametrize("kind,knobs", CASES, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in kn.items()) or 'defaults'}"
                                                   for k, kn in CASES])
def test_kind_equals_its_reference(kind, knobs, compact):
    ffn = make(kind, **knobs)
    x, ctx, enter = setup()
    x.requires_grad_(True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=x.dtype)
    shared = ffn.shared(x) if getattr(ffn, "shared", None) is not None else 0.0
    ref = reference(kind, ffn, x, ctx, enter) + shared
    got = fast(ffn, x, ctx, enter, compact)
    if compact:  # the rows not entering are not computed
        ref = ref * enter[:, None]
    e = enter[:, None]
    torch.testing.assert_close(got * e, ref * e, atol=1e-10, rtol=1e-10)
    if not compact:  # a row that does not enter gets nothing from the routed experts
        torch.testing.assert_close(got * ~e, (shared * ~e) if torch.is_tensor(shared) else got * 0)
    params = [x] + [p for p in ffn.parameters()]
    g_ref = torch.autograd.grad((ref * e * weights).sum(), params, allow_unused=True)
    g_got = torch.autograd.grad((got * e * weights).sum(), params, allow_unused=True)
    names = ["x"] + [n for n, _ in ffn.named_parameters()]
    for name, a, b in zip(names, g_got, g_ref):
        if a is None or b is None:
            assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum()), name
            continue
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("kind,knobs", [("switch", {"capacity_factor": 0.6}), ("topk", {"k": 3, "capacity_factor": 0.5}),
                                        ("topk", {"k": 2, "mi": 0.1}),
                                        ("expert_choice", {"capacity": 0.7}), ("soft_moe", {})])
def test_aux_terms_and_flops_equal_in_dense_and_compact(kind, knobs):
    ffn = make(kind, **knobs)
    x, ctx_d, enter = setup()
    _, ctx_c, _ = setup()
    for ctx in (ctx_d, ctx_c):
        ctx.flops = torch.zeros(B, L, dtype=torch.float64)
    fast(ffn, x, ctx_d, enter, False)
    fast(ffn, x, ctx_c, enter, True)
    aux_d, aux_c = ctx_d.aux_terms(), ctx_c.aux_terms()
    assert aux_d.keys() == aux_c.keys()
    for key in aux_d:
        torch.testing.assert_close(aux_c[key], aux_d[key])
    torch.testing.assert_close(ctx_c.flops, ctx_d.flops)
    assert not ctx_d.flops.view(-1)[~enter].any()  # nothing counted on rows not entering


# -- capacity and drops ------------------------------------------------------------------
def test_a_token_over_capacity_passes_through_unchanged():
    """Every token prefers expert 0; capacity 1: the first position keeps it, the others are
    dropped and the block's FFN sub-layer leaves them exactly as they were."""
    from ponder.models.layers import Block, BlockSpec
    spec = BlockSpec(d_model=D, n_heads=2, d_ff=D_FF, ffn="switch",
                     ffn_knobs=FFNS.knobs("switch", {"n_experts": 4, "capacity_factor": 1.0}))
    block = Block(spec=spec).double()
    with torch.no_grad():
        block.ffn.router.weight.zero_()
        block.ffn.router.weight[0] = 1.0
    x = torch.randn(1, 4, D, dtype=torch.float64).abs() + 0.1  # positive: argmax 0 everywhere
    ctx = AttnContext.build(torch.ones(1, 4, dtype=torch.bool), causal=False)
    ctx.set_entering(None)
    out = block.ffn_residual(x.view(4, D), ctx)
    # capacity ceil(1.0 · 4 / 4) = 1: positions 1..3 are dropped, unchanged
    torch.testing.assert_close(out[1:], x.view(4, D)[1:], atol=0, rtol=0)
    assert not torch.equal(out[0], x.view(4, D)[0])
    assert ctx.stats["switch.dropped"] == [0.75]


def test_priority_is_position_then_sequence_and_first_choices_first():
    ffn = make("topk", k=2, n_experts=2, capacity_factor=0.5)
    x, ctx, enter = setup(seed=1)
    got = ffn(x, ctx, None)
    ref, dropped = ref_token_choice(ffn, x, enter, k=2, normalise=True)
    assert dropped  # capacity 0.5 · n · 2 / 2 = n/2 per expert: some pairs are dropped
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)


def test_switch_flops_are_the_experts_really_evaluated():
    ffn = make("switch", capacity_factor=0.6)
    x, ctx, enter = setup()
    ctx.flops = torch.zeros(B, L, dtype=torch.float64)
    ctx.count_flops(ctx.entering["mask"].view(B, L), ffn.flops_per_token())
    ffn(x, ctx, None)
    _, dropped = ref_token_choice(ffn, x, enter, k=1, normalise=False)
    assert dropped
    router = 2.0 * D * ffn.n_experts
    per_expert = 4.0 * D * ffn.experts.d_expert
    expected = torch.zeros(B * L, dtype=torch.float64)
    for t in enter.nonzero().view(-1).tolist():
        expected[t] = router + (0.0 if t in dropped else per_expert)
    torch.testing.assert_close(ctx.flops.view(-1), expected)


def test_expert_choice_flops_count_the_experts_that_took_each_token():
    ffn = make("expert_choice", capacity=0.7)
    x, ctx, enter = setup()
    ctx.flops = torch.zeros(B, L, dtype=torch.float64)
    ctx.count_flops(ctx.entering["mask"].view(B, L), ffn.flops_per_token())
    ffn(x, ctx, None)
    taken = torch.zeros(B * L, dtype=torch.float64)
    for b in range(B):
        toks = [b * L + i for i in range(L) if enter[b * L + i]]
        k = min(math.ceil(0.7 * len(toks) / ffn.n_experts), len(toks))
        for e in range(ffn.n_experts):
            for t in sorted(toks, key=lambda t: -float(torch.softmax(ffn.router(x[t]), 0)[e].detach()))[:k]:
                taken[t] += 1
    expected = (2.0 * D * ffn.n_experts + taken * 4.0 * D * ffn.experts.d_expert) * enter
    torch.testing.assert_close(ctx.flops.view(-1), expected)


# -- aux losses --------------------------------------------------------------------------
def test_load_balance_and_z_loss_on_a_hand_computed_case():
    """Router = identity on D = E = 2; rows (ln 3, 0) ×3 and (0, ln 3): probabilities
    (¾, ¼) ×3 and (¼, ¾), argmax 0, 0, 0, 1 → f = (¾, ¼), P = (0.625, 0.375);
    α·N·Σ f P = 1·2·(0.46875 + 0.09375) = 1.125; every logsumexp is ln 4 → z = (ln 4)²."""
    ffn = FFNS.cls("switch")(d_model=2, d_ff=4, knobs=FFNS.knobs("switch", {
        "n_experts": 2, "balance": 1.0, "z_loss": 1.0, "capacity_factor": 0.0})).double()
    with torch.no_grad():
        ffn.router.weight.copy_(torch.eye(2))
    l3 = math.log(3.0)
    x = torch.tensor([[l3, 0.0], [l3, 0.0], [l3, 0.0], [0.0, l3], [5.0, -5.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]])  # the pad must not count
    ctx = AttnContext.build(mask, causal=False)
    ffn(x, ctx, None)
    torch.testing.assert_close(ctx.aux["switch_balance"], torch.tensor(1.125, dtype=torch.float64))
    torch.testing.assert_close(ctx.aux["switch_z"], torch.tensor(math.log(4.0) ** 2, dtype=torch.float64))


def test_sigma_moe_entropy_regulariser_is_the_negative_entropy_of_the_mean_selection():
    ffn = make("sigma_moe", entropy=1.0)
    x, ctx, enter = setup()
    ffn(x, ctx, None)
    p = torch.stack([torch.softmax(ffn.router(x[t]), 0) for t in enter.nonzero().view(-1)]).mean(0)
    torch.testing.assert_close(ctx.aux["sigma_moe_entropy"], (p * p.log()).sum())


def test_routing_statistics_reach_the_training_stats():
    import ponder.models as models
    from ponder.models.config import KindConfig, ModelConfig
    from ponder.policies.scripted import ScriptedPolicy
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=2, execution="dense",
                      ffn=KindConfig(kind="topk", knobs={"capacity_factor": 1.0}))
    model = models.build(cfg, ScriptedPolicy(steps=2), vocab_size=7)
    tokens = torch.randint(0, 7, (2, 5))
    out = model(tokens, torch.ones(2, 5, dtype=torch.bool))
    _, stats = model.loss(out, tokens)
    for key in ("route/topk.dropped", "route/topk.imbalance", "route/topk.entropy",
                "route/topk.margin", "aux/topk_balance", "aux/topk_z"):
        assert key in stats, key
    assert 0.0 <= stats["route/topk.dropped"] < 1.0
    assert 1.0 <= stats["route/topk.imbalance"] <= 8.0
    assert 0.0 < stats["route/topk.entropy"] <= math.log(8) + 1e-9


# -- the sorted dispatch ------------------------------------------------------------------
def test_sorted_dispatch_equals_a_loop_over_assignments():
    torch.manual_seed(0)
    bank = ExpertBank(n_experts=5, d_model=D, d_expert=7).double()
    x = torch.randn(9, D, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(2)
    token = torch.randint(0, 9, (14,), generator=g)
    expert_ = torch.randint(0, 4, (14,), generator=g)  # expert 4 gets nothing
    gate = torch.rand(14, generator=g, dtype=torch.float64, requires_grad=True)
    got = bank.dispatch(x, token, expert_, gate)
    ref = torch.zeros(9, D, dtype=torch.float64)
    for a in range(14):
        ref = ref.index_add(0, token[a:a + 1], (gate[a] * expert(bank, int(expert_[a]), x[token[a]]))[None])
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    params = [x, gate, *bank.parameters()]
    for a, b in zip(torch.autograd.grad(got.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


# -- refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["expert_choice", "soft_moe"])
def test_non_causal_kinds_are_refused_by_a_causal_model_exit_2(kind, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "model.causal=true", f"model.ffn.kind={kind}", "run.steps=1",
                 "--out", str(out), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "not causal" in err
    assert not out.exists()


@pytest.mark.parametrize("knobs", [{"k": 9}, {"n_experts": 0}, {"capacity_factor": -1.0}])
def test_bad_knobs_are_one_config_error(knobs, tmp_path, capsys):
    args = [f"model.ffn.knobs.{k}={v}" for k, v in knobs.items()]
    code = main(["train", "model.ffn.kind=topk", *args, "--out", str(tmp_path / "r"), "--progress", "none"])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind,knobs", [("switch", {"capacity_factor": 0.0}), ("topk", {"k": 3, "capacity_factor": 0.0}),
                                        ("sigma_moe", {}), ("hash", {})])
@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
def test_inference_path_equals_the_reference(kind, knobs, compact):
    """Without autograd the complete pairs go through the in-place combine (no cat, no scatter)."""
    ffn = make(kind, **knobs)
    x, ctx, enter = setup()
    with torch.no_grad():
        got = fast(ffn, x, ctx, enter, compact)
        ref = reference(kind, ffn, x, ctx, enter)
    e = enter[:, None]
    torch.testing.assert_close(got * e, ref * e, atol=1e-10, rtol=1e-10)
