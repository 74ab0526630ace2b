"""Compacted execution equals the dense reference: logits, steps and gradients.

The dense engine (``execution="dense"``) is the reference; ``compact`` must give the same
per-token results for every registered policy, both stack kinds, causal and bidirectional,
with padding in the batch — and, in training, the same gradients. Policies are made to halt
at varied depths (a random untrained model with default knobs often runs every token to N),
and each test checks that tokens really halted at different steps, so compaction is exercised.
"""

from __future__ import annotations

import copy
import functools
import dataclasses

import pytest
import torch

import ponder.models as models
import ponder.kernels as kernels
import ponder.models.compact as compact
import ponder.models.dispatch as dispatch
import ponder.policies as policies
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.models.layers import AttnContext
from ponder.policies.scripted import ScriptedPolicy
from tests.batches import padded_batch

V = 13
N = 6
TOL = 1e-5


def batch(B: int = 4, L: int = 9, seed: int = 0):
    """tokens [B, L], mask [B, L] with two padded rows (one short), targets with pads ignored."""
    return padded_batch(vocab=V, B=B, L=L, seed=seed)


def cfg(kind: str, causal: bool, **kw) -> ModelConfig:
    base = dict(kind=kind, d_model=16, n_heads=2, d_ff=32, prelude=1, core=1, coda=1,
                max_steps=N, causal=causal, positions="none", execution="dense")
    base.update(kw)
    return ModelConfig(**base)


# -- making a random model halt at varied depths ------------------------------------------
KNOB_TRIES = {
    "halt_bias": (-1.0, 0.0, 1.0, 2.0, -6.0, -6.5),  # the last two: near the Q-head's −5 start
    "threshold": (0.01, 0.1, 0.3, 0.7, 0.4, 1.1),  # the last two: convergence exits on a random model
    "stop": (0.9, 0.6),
    "steps": (3,),
    "patience": (1,),
    # ut_act's t2t semantics freeze nothing before N in a causal model: test its frozen one there
    "semantics": ("frozen",),
    "hits": (1,),
}
# knob combinations tried after the single knobs (a two-hit test needs a looser threshold too)
KNOB_COMBOS = ({"threshold": 0.35, "hits": 1},)


def candidates(name: str):
    """Knob overrides to try, each with and without perturbing the policy's parameters."""
    fields = {f.name: f for f in policies.policy_class(name).knob_fields()}
    overrides: list[dict] = [{}]
    for knob, values in KNOB_TRIES.items():
        if knob in fields:
            lo, hi = fields[knob].metadata.get("lo"), fields[knob].metadata.get("hi")
            overrides += [{knob: v} for v in values
                          if (lo is None or v >= lo) and (hi is None or v <= hi)]
    overrides += [dict(c) for c in KNOB_COMBOS if set(c) <= set(fields)]
    return [(o, perturb) for perturb in (False, True) for o in overrides]


def build(name: str, config: ModelConfig, overrides: dict, perturb: bool):
    torch.manual_seed(0)
    model = models.build(config, policies.get(name, **overrides), vocab_size=V)
    if perturb:
        # break zero-initialised gates (every token alike) and sharpen the readout, so that
        # confidence-type exits fire on some tokens and not on others
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.policy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
            model.readout.head.weight.mul_(8.0)
    return model


@functools.lru_cache(maxsize=None)
def halting_choice(name: str, kind: str, causal: bool, training: bool):
    """The first candidate (knobs, perturb) whose dense run has ≥ 3 distinct step counts, else
    the one with the most; → (overrides as a tuple of items, perturb, (distinct, early))."""
    tokens, mask, _ = batch()
    best, best_key = None, None
    for overrides, perturb in candidates(name):
        model = build(name, cfg(kind, causal), overrides, perturb).train(training)
        with torch.no_grad():
            steps = model(tokens, mask).steps[mask]
        key = (len(torch.unique(steps)), int(steps.min() < N))
        if best_key is None or key > best_key:
            best, best_key = (tuple(overrides.items()), perturb), key
        if key[0] >= 3:
            break
    return best[0], best[1], best_key


def halting_model(name: str, config: ModelConfig, *, training: bool):
    """A model of policy ``name`` that halts at varied depths (≥ 2 distinct step counts are
    required in eval; in training a policy with an expected/per-exit objective runs every
    token), and the (distinct step counts, some token halted early) of its dense run."""
    overrides, perturb, key = halting_choice(name, config.kind, config.causal, training)
    return build(name, config, dict(overrides), perturb).train(training), key


def with_execution(model, execution: str):
    twin = copy.deepcopy(model)
    twin.cfg = dataclasses.replace(model.cfg, execution=execution)
    return twin


def set_path(path: str, monkeypatch) -> list:
    """Run eval-mode compacted steps through the compiled kernels (``compiled``) or the PyTorch
    ops (``pytorch``: padded attention calls, index_copy). Returns a list that records each call
    of the compiled attention, to check that it really ran. Without a C++ compiler the kernels
    cannot build and ``compiled`` is the PyTorch path too (tests/models/test_kernels.py checks
    that this is the only reason)."""
    calls: list = []
    if path == "pytorch":
        monkeypatch.setattr(dispatch.kernels, "load", lambda: False)
        return calls
    real = kernels.varlen_attention

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(dispatch.kernels, "varlen_attention", counted)
    return calls


def combos():
    out = []
    for name in policies.names():
        cls = policies.policy_class(name)
        for kind in ("recurrent", "stacked"):
            for causal in (False, True):
                if kind in cls.kinds and (cls.causal or not causal):
                    out.append((name, kind, causal))
    return out


def ids(c):
    return f"{c[0]}-{c[1]}-{'causal' if c[2] else 'bidir'}"


# -- every registered policy, inference ---------------------------------------------------
@pytest.mark.parametrize("path", ["compiled", "pytorch"])
@pytest.mark.parametrize("combo", combos(), ids=ids)
def test_compact_equals_dense_in_eval(combo, path, monkeypatch):
    name, kind, causal = combo
    set_path(path, monkeypatch)
    dense, (distinct, early) = halting_model(name, cfg(kind, causal), training=False)
    assert early, f"could not make policy {name!r} halt any token before step {N}"
    if name != "fixed":  # a fixed depth is one depth by definition
        assert distinct >= 2, f"policy {name!r} halted every token at the same step"
    dense.eval()
    comp = with_execution(dense, "compact").eval()
    tokens, mask, _ = batch()
    with torch.no_grad():
        a = dense(tokens, mask)
        b = comp(tokens, mask)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(b.logits, a.logits, atol=TOL, rtol=TOL)
    if a.halt_step is not None:
        assert torch.equal(a.halt_step, b.halt_step)
    if a.halt_dist is not None:
        torch.testing.assert_close(b.halt_dist, a.halt_dist, atol=TOL, rtol=TOL)


# -- every registered policy, training: same loss and gradients ---------------------------
@pytest.mark.parametrize("mode", ["fallback", "always-gather", "always-full-refresh"])
@pytest.mark.parametrize("combo", combos(), ids=ids)
def test_compact_training_gradients_equal_dense(combo, mode, monkeypatch):
    name, kind, causal = combo
    if mode != "fallback":
        monkeypatch.setattr(compact, "DENSE_FALLBACK", 2.0)
        monkeypatch.setattr(compact, "FULL_REFRESH", 0.0 if mode == "always-full-refresh" else 2.0)
    dense, _ = halting_model(name, cfg(kind, causal), training=True)
    dense.train()
    comp = with_execution(dense, "compact").train()
    tokens, mask, targets = batch()
    losses = []
    for model in (dense, comp):
        out = model(tokens, mask)
        loss, _ = model.loss(out, targets)
        loss.backward()
        losses.append((loss.detach(), out.steps))
    assert torch.equal(losses[0][1], losses[1][1])
    torch.testing.assert_close(losses[1][0], losses[0][0], atol=TOL, rtol=TOL)
    for (pname, p), (_, q) in zip(dense.named_parameters(), comp.named_parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), pname
            continue
        torch.testing.assert_close(q.grad, p.grad, atol=TOL, rtol=1e-4, msg=pname)


def test_hard_training_policies_really_halt_in_training():
    """ACT-style policies halt in training too, so the gradient test above compacts there."""
    tokens, mask, _ = batch()
    for name in ("act", "ut_act", "stickbreak"):
        model, (distinct, early) = halting_model(name, cfg("recurrent", False), training=True)
        assert early and distinct >= 2, name


# -- the engine's corner cases, with a scripted depth profile ------------------------------
def scripted_models(kind: str, causal: bool, positions: str, core: int, steps: torch.Tensor):
    torch.manual_seed(3)
    config = cfg(kind, causal, positions=positions, core=core)
    dense = models.build(config, ScriptedPolicy(steps=steps), vocab_size=V)
    return dense, with_execution(dense, "compact")


@pytest.mark.parametrize("fallback,saving,refresh", [(0.0, None, None), (None, None, None),
                                                     (2.0, 1.0, 2.0), (2.0, 0.0, 2.0),
                                                     (2.0, 0.0, 0.0), (2.0, 1.0, 0.0)],
                         ids=["always-dense", "default", "one-group", "split-groups",
                              "full-refresh-split", "full-refresh-one-group"])
@pytest.mark.parametrize("positions", ["none", "rotary", "learned"])
@pytest.mark.parametrize("kind,causal,core", [("recurrent", False, 1), ("recurrent", True, 2),
                                              ("stacked", False, 2), ("stacked", True, 1)])
@pytest.mark.parametrize("path", ["compiled", "pytorch"])
def test_scripted_depths_equal_dense(kind, causal, core, positions, fallback, saving, refresh, path,
                                     monkeypatch):
    """Every way of running a step (dense fallback; keys/values of every row with the queries
    gathered; keys/values of the needed rows only, through the cache; one or two attention
    groups; the compiled kernels or the PyTorch ops) equals the dense engine."""
    set_path(path, monkeypatch)
    if fallback is not None:
        monkeypatch.setattr(compact, "DENSE_FALLBACK", fallback)
    if refresh is not None:
        monkeypatch.setattr(compact, "FULL_REFRESH", refresh)
    if saving is not None:
        monkeypatch.setattr(dispatch, "GROUP_SAVING", saving)
        monkeypatch.setattr(dispatch, "GROUP_MIN_QUERIES", 1)
        monkeypatch.setattr(dispatch, "KEEP_ALL", 1.0 if saving else 2.0)  # keep all / drop halted
    tokens, mask, _ = batch(B=5, L=11, seed=2)
    g = torch.Generator().manual_seed(4)
    steps = torch.randint(1, N + 1, (5, 11), generator=g)
    steps[4, :8] = 1        # few active tokens here, many elsewhere: unequal groups
    steps[0] = 1            # a sequence that is dropped after step 1
    steps[3, :] = N         # one that runs to the end
    dense, comp = scripted_models(kind, causal, positions, core, steps)
    for model in (dense, comp):
        model.eval()
    with torch.no_grad():
        a, b = dense(tokens, mask), comp(tokens, mask)
    assert torch.equal(a.steps, b.steps)
    assert torch.equal(a.steps, torch.where(mask, steps, 0))
    torch.testing.assert_close(b.logits, a.logits, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("path", ["compiled", "flash", "matmul"])
@pytest.mark.parametrize("kind,causal", [("recurrent", False), ("recurrent", True), ("stacked", True)])
def test_every_attention_kernel_equals_dense(kind, causal, path, monkeypatch):
    """The active queries give the same result through the compiled unpadded attention, and,
    padded into per-sequence blocks, through the flash kernel and through the matrix-multiply
    attention used for few queries per sequence (pads and causal masks)."""
    compiled = set_path("compiled" if path == "compiled" else "pytorch", monkeypatch)
    small = 1000 if path == "matmul" else 0
    monkeypatch.setattr(dispatch, "SMALL_QUERIES", (small, small))
    monkeypatch.setattr(compact, "DENSE_FALLBACK", 2.0)
    tokens, mask, _ = batch(B=5, L=11, seed=2)
    steps = torch.randint(1, N + 1, (5, 11), generator=torch.Generator().manual_seed(8))
    dense, comp = scripted_models(kind, causal, "rotary", 1, steps)
    dense.eval(), comp.eval()
    kernel_calls, kinds = [], []
    real_kernel, real_attend = dispatch.F.scaled_dot_product_attention, dispatch.Dispatch._padded

    def kernel(*args, **kw):
        kernel_calls.append(1)
        return real_kernel(*args, **kw)

    def attend(self, *args):
        before = len(kernel_calls)
        out = real_attend(self, *args)
        kinds.append("flash" if len(kernel_calls) > before else "matmul")
        return out

    monkeypatch.setattr(dispatch.F, "scaled_dot_product_attention", kernel)
    monkeypatch.setattr(dispatch.Dispatch, "_padded", attend)
    with torch.inference_mode():
        a, b = dense(tokens, mask), comp(tokens, mask)
    torch.testing.assert_close(b.logits, a.logits, atol=TOL, rtol=TOL)
    if path == "compiled" and kernels.load():
        assert compiled and not kinds
    else:
        assert kinds and set(kinds) == {"matmul" if path == "matmul" else "flash"}


def test_split_groups_really_split(monkeypatch):
    monkeypatch.setattr(dispatch, "GROUP_MIN_QUERIES", 1)
    active = torch.zeros(6, 10, dtype=torch.bool)
    active[:2] = True
    active[2:, 0] = True
    mask = torch.ones(6, 10, dtype=torch.bool)
    index = dispatch.build_index(active, AttnContext.build(mask, causal=False), dense=False)
    assert [g.a_max for g in index.groups] == [10, 1]
    assert index.order is not None


def _reference_groups(active: torch.Tensor) -> list[tuple[list[int], int]]:
    """Slow, plain-Python choice of the padded attention calls (sequence ids, padded length)."""
    B = active.shape[0]
    counts = [int(c) for c in active.sum(1)]
    live = [b for b in range(B) if counts[b] > 0]
    by_count = sorted(live, key=lambda b: -counts[b])  # stable: ties keep batch order
    a_top = counts[by_count[0]]
    best_k, best_cost = len(live), len(live) * a_top
    for k in range(1, len(live)):
        cost = k * a_top + (len(live) - k) * counts[by_count[k]]
        if cost < best_cost:
            best_k, best_cost = k, cost
    if a_top >= dispatch.GROUP_MIN_QUERIES and best_cost < (1 - dispatch.GROUP_SAVING) * len(live) * a_top:
        return [(sorted(by_count[:best_k]), a_top), (sorted(by_count[best_k:]), counts[by_count[best_k]])]
    return [(list(range(B)) if len(live) >= dispatch.KEEP_ALL * B else live, a_top)]


@pytest.mark.parametrize("seed", range(40))
def test_query_groups_match_a_plain_reference(seed, monkeypatch):
    """The vectorised choice of padded calls (split point, sequences, padded lengths, query
    slots) equals a slow loop over the sequences, and every active token gets its own slot."""
    monkeypatch.setattr(dispatch, "GROUP_MIN_QUERIES", 1 + seed % 3)
    g = torch.Generator().manual_seed(seed)
    B, L = 2 + seed % 9, 3 + seed % 7
    p = torch.rand(B, 1, generator=g) ** (1 + seed % 4)  # uneven counts per sequence
    active = torch.rand(B, L, generator=g) < p
    active[seed % B, seed % L] = True
    mask = torch.ones(B, L, dtype=torch.bool)
    index = dispatch.build_index(active, AttnContext.build(mask, causal=False), dense=False)
    got = [(list(range(B)) if grp.seqs is None else grp.seqs.tolist(), grp.a_max) for grp in index.groups]
    assert got == _reference_groups(active)
    rows = active.reshape(-1).nonzero().view(-1)
    assert torch.equal(index.rows, rows)
    for grp in index.groups:  # slot = (position of the sequence in the call) · a_max + rank
        taken = rows if grp.take is None else rows.index_select(0, grp.take)
        seqs = list(range(B)) if grp.seqs is None else grp.seqs.tolist()
        rank = (active.cumsum(1) - 1).reshape(-1)
        want = [seqs.index(int(r) // L) * grp.a_max + int(rank[r]) for r in taken]
        assert grp.slot.tolist() == want
    if len(index.groups) == 2:
        order = torch.cat([grp.take for grp in index.groups])[index.order]
        assert torch.equal(order, torch.arange(rows.numel()))


def test_inference_mode_and_eval_with_autograd_agree():
    """The in-place path (no autograd) and the out-of-place path give the same outputs."""
    tokens, mask, _ = batch()
    steps = torch.randint(1, N + 1, (4, 9), generator=torch.Generator().manual_seed(5))
    _, comp = scripted_models("recurrent", True, "rotary", 2, steps)
    comp.eval()
    with torch.inference_mode():
        a = comp(tokens, mask)
    b = comp(tokens, mask)
    torch.testing.assert_close(b.logits.detach(), a.logits, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("refresh", [0.0, 2.0], ids=["full-refresh", "gathered"])
@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
def test_scripted_gradients_equal_dense(kind, refresh, monkeypatch):
    """Frozen tokens stay keys/values without passing gradient to their state (dense rule),
    through the gathered paths (eval flag, autograd on: scripted depths halt in both modes)."""
    monkeypatch.setattr(compact, "FULL_REFRESH", refresh)
    tokens, mask, targets = batch()
    steps = torch.randint(1, N + 1, (4, 9), generator=torch.Generator().manual_seed(6))
    dense, comp = scripted_models(kind, True, "rotary", 2, steps)
    grads = []
    for model in (dense, comp):
        model.eval()
        model.zero_grad()
        out = model(tokens, mask)
        model.loss(out, targets)[0].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=TOL, rtol=1e-4, msg=name)


# -- which execution runs ------------------------------------------------------------------
def test_auto_is_compact_in_eval_and_dense_in_training(monkeypatch):
    calls = []
    real = compact.CompactStepper.__init__

    def spy(self, **kw):
        calls.append(torch.is_grad_enabled())
        real(self, **kw)

    monkeypatch.setattr(compact.CompactStepper, "__init__", spy)
    tokens, mask, _ = batch()
    model = models.build(cfg("recurrent", False, execution="auto"), policies.get("act"), vocab_size=V)
    model.train()(tokens, mask)
    assert calls == []
    with torch.no_grad():
        model.eval()(tokens, mask)
    assert calls == [False]


def test_unknown_execution_is_a_config_error():
    with pytest.raises(ConfigError, match="execution"):
        models.build(cfg("recurrent", False, execution="sparse"), policies.get("fixed"), vocab_size=V)


# -- state buffers reused across steps (no autograd) -----------------------------------------
class HoardingPolicy(ScriptedPolicy):
    """Scripted halting that keeps ``view.h`` / ``view.prev`` (and a view of it) of every step,
    with a private copy of each, so the test can see whether the engine wrote into them."""

    def start(self, view):
        memo = super().start(view)
        memo["kept"] = []
        return memo

    def step(self, memo, view):
        for t in (view.h, view.prev.detach(), view.h.view(-1)):
            memo["kept"].append((t, t.clone()))
        return super().step(memo, view)


def reuse_spy(monkeypatch):
    """→ a list that gets, per compacted step, whether the state buffer was a reused one
    (the spare's address is read while the spare is alive, so a fresh allocation cannot
    coincide with it)."""
    seen: list[bool] = []
    real = compact.CompactStepper._state_buffer

    def state_buffer(self, h, act_flat):
        ptr = None if self._spare is None else self._spare.data_ptr()
        out = real(self, h, act_flat)
        seen.append(out.data_ptr() == ptr)
        return out

    monkeypatch.setattr(compact.CompactStepper, "_state_buffer", state_buffer)
    return seen


@pytest.mark.parametrize("kind,causal,core,positions", [("recurrent", False, 1, "learned"),
                                                        ("recurrent", True, 2, "rotary"),
                                                        ("stacked", False, 1, "none")])
def test_reused_state_buffers_equal_dense(kind, causal, core, positions, monkeypatch):
    """With buffer reuse forced at every step, compact equals dense — and buffers really are
    reused (the same storage comes back two steps later)."""
    monkeypatch.setattr(compact, "SPARE_MAX", 1.0)
    monkeypatch.setattr(compact, "DENSE_FALLBACK", 2.0)
    seen = reuse_spy(monkeypatch)
    tokens, mask, _ = batch(B=5, L=11, seed=2)
    steps = torch.randint(1, N + 1, (5, 11), generator=torch.Generator().manual_seed(7))
    dense, comp = scripted_models(kind, causal, positions, core, steps)
    dense.eval(), comp.eval()
    with torch.inference_mode():
        a, b = dense(tokens, mask), comp(tokens, mask)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(b.logits, a.logits, atol=TOL, rtol=TOL)
    assert any(seen), "no state buffer was reused"


def test_policy_holding_views_is_never_overwritten(monkeypatch):
    """A policy that keeps the states it was shown (and views of them) across steps sees them
    unchanged at the end: the engine only reuses a buffer nobody else holds."""
    monkeypatch.setattr(compact, "SPARE_MAX", 1.0)
    monkeypatch.setattr(compact, "DENSE_FALLBACK", 2.0)
    tokens, mask, _ = batch(B=5, L=11, seed=2)
    steps = torch.randint(1, N + 1, (5, 11), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(3)
    config = cfg("recurrent", False, positions="learned")
    dense = models.build(config, HoardingPolicy(steps=steps), vocab_size=V).eval()
    comp = with_execution(dense, "compact")
    memos = []
    real_finish = HoardingPolicy.finish

    def finish(self, memo, view):
        memos.append(memo)
        return real_finish(self, memo, view)

    monkeypatch.setattr(HoardingPolicy, "finish", finish)
    seen = reuse_spy(monkeypatch)
    with torch.inference_mode():
        a, b = dense(tokens, mask), comp(tokens, mask)
    torch.testing.assert_close(b.logits, a.logits, atol=TOL, rtol=TOL)
    assert seen and not any(seen)  # every step checked, none could reuse
    kept = memos[1]["kept"]
    assert len(kept) == 3 * N
    for t, copy_then in kept:
        assert torch.equal(t, copy_then)


def test_dense_engine_without_pads_equals_masked_loop():
    """The dense engine drops the all-True attention mask when there are no pads and no
    causality; the result is that of the plain loop with the full mask."""
    tokens, _, _ = batch(B=3, L=8, seed=3)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    torch.manual_seed(3)
    model = models.build(cfg("recurrent", False, positions="learned", core=2),
                         ScriptedPolicy(steps=N), vocab_size=V).eval()
    ctx = AttnContext.build(mask, causal=False, rope=model.rotary)
    assert ctx.attn_mask is not None
    with torch.no_grad():
        h = model.prelude(model.embed(tokens), ctx)
        for n in range(1, N + 1):
            e = model.step_vector(n)
            h = model.core_group(n)(h if e is None else h + e, ctx)
        want = model.readout(h, ctx)
        got = model(tokens, mask).logits
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
