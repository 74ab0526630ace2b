"""Every registered policy × both stack kinds × causal/bidirectional: the contract.

Parametrised over ``ponder.policies.names()`` so policies added later are covered too.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
import ponder.tasks as tasks
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.policies.base import Decision, Policy, View

KINDS = ("recurrent", "stacked")
N = 4


def batch_and_vocab(n: int = 6, seed: int = 0):
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    return tasks.collate([task.example("train", seed + i) for i in range(n)], vocab), len(vocab)


def cfg(kind: str, causal: bool, **kw) -> ModelConfig:
    base = dict(kind=kind, causal=causal, d_model=16, n_heads=2, d_ff=32, prelude=1, core=1,
                coda=1, max_steps=N, positions="none")
    base.update(kw)
    return ModelConfig(**base)


def knob_names(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(policies.policy_class(name).Knobs)}


def combos():
    for name in policies.names():
        for kind in KINDS:
            for causal in (False, True):
                yield name, kind, causal


def supported(name: str, kind: str, causal: bool) -> bool:
    cls = policies.policy_class(name)
    return kind in cls.kinds and (cls.causal or not causal)


@pytest.mark.parametrize("name,kind,causal", list(combos()))
def test_forward_backward_contract(name, kind, causal):
    torch.manual_seed(0)
    batch, V = batch_and_vocab()
    if not supported(name, kind, causal):
        with pytest.raises(ConfigError):
            models.build(cfg(kind, causal), policies.get(name), vocab_size=V)
        return
    model = models.build(cfg(kind, causal), policies.get(name), vocab_size=V)
    m = batch.mask
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        out = model(batch.tokens, batch.mask)
        B, L = batch.tokens.shape
        assert out.logits.shape == (B, L, V)
        assert torch.isfinite(out.logits).all()
        assert ((out.steps[m] >= 1) & (out.steps[m] <= N)).all()
        assert (out.steps[~m] == 0).all()
        if out.halt_dist is not None:
            assert out.halt_dist.shape == (B, L, N)
            assert (out.halt_dist >= 0).all()
            assert torch.allclose(out.halt_dist.sum(-1)[m], torch.ones(()), atol=1e-5)
        if out.halt_step is not None:
            assert ((out.halt_step[m] >= 1) & (out.halt_step[m] <= N)).all()
            if not training:
                assert torch.equal(out.halt_step[m], out.steps[m])
        loss, stats = model.loss(out, batch.targets)
        assert math.isfinite(loss.item())
        assert all(math.isfinite(v) for v in stats.values())
        loss.backward()
        if training:
            missing = []
            untrained = {f"policy.{p}" for p in type(model.policy).untrained_params}
            later = {f"policy.{p}" for p in type(model.policy).zero_grad_at_init}
            for pname, p in model.named_parameters():
                if pname in untrained:
                    continue
                if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0:
                    missing.append(pname)
            assert set(missing) <= later, f"no gradient reaches {sorted(set(missing) - later)}"
            if missing:  # behind a zero-initialised layer: reached after one update of it
                with torch.no_grad():
                    for p in model.parameters():
                        if p.grad is not None:
                            p.sub_(0.1 * p.grad)
                model.zero_grad()
                loss, _ = model.loss(model(batch.tokens, batch.mask), batch.targets)
                loss.backward()
                grads = dict(model.named_parameters())
                assert all(grads[n].grad is not None and grads[n].grad.abs().sum() > 0
                           for n in missing), missing


@pytest.mark.parametrize("name", policies.names())
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_extreme_logits_and_inputs_stay_finite(name, sign):
    """Halting logits ±50 and inputs ×1e3: no NaN/inf in outputs, losses or gradients."""
    torch.manual_seed(1)
    batch, V = batch_and_vocab()
    knobs = {"halt_bias": 50.0 * sign} if "halt_bias" in knob_names(name) else {}
    kind = policies.policy_class(name).kinds[0]
    model = models.build(cfg(kind, False), policies.get(name, **knobs), vocab_size=V)
    with torch.no_grad():
        model.embed.tok.weight.mul_(1e3)
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        out = model(batch.tokens, batch.mask)
        loss, stats = model.loss(out, batch.targets)
        assert torch.isfinite(out.logits).all() and math.isfinite(loss.item())
        assert all(math.isfinite(v) for v in stats.values())
        if out.halt_dist is not None:
            assert torch.allclose(out.halt_dist.sum(-1)[batch.mask], torch.ones(()), atol=1e-5)
        loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name,kind", [(n, k) for n in policies.names() for k in KINDS
                                       if policies.policy_class(n).causal
                                       and k in policies.policy_class(n).kinds])
def test_causal_policies_do_not_look_ahead(name, kind):
    """Changing tokens after position i changes neither logits nor steps at ≤ i."""
    torch.manual_seed(2)
    batch, V = batch_and_vocab(4)
    knobs = {"halt_bias": 0.0} if "halt_bias" in knob_names(name) else {}
    model = models.build(cfg(kind, True), policies.get(name, **knobs), vocab_size=V)
    i = 2
    changed = batch.tokens.clone()
    changed[:, i + 1:] = torch.randint(2, V, changed[:, i + 1:].shape)
    for training in (True, False):
        model.train(training)
        a = model(batch.tokens, batch.mask)
        b = model(changed, batch.mask)
        assert torch.allclose(a.logits[:, : i + 1], b.logits[:, : i + 1], atol=1e-5)
        assert torch.equal(a.steps[:, : i + 1], b.steps[:, : i + 1])
        if a.halt_dist is not None:
            assert torch.allclose(a.halt_dist[:, : i + 1], b.halt_dist[:, : i + 1], atol=1e-5)
        # and the test can fail: later positions do change
        assert not torch.allclose(a.logits[:, i + 1:], b.logits[:, i + 1:], atol=1e-4)


@pytest.mark.parametrize("name", policies.names())
def test_no_gradient_reaches_a_halted_tokens_state_after_it_halts(name):
    """In eval mode tokens freeze; the loss of the other tokens sends no gradient into the
    state a token had when it halted (coda 0 so the readout is per token)."""
    torch.manual_seed(3)
    batch, V = batch_and_vocab(6)
    has_bias = "halt_bias" in knob_names(name)
    knobs = {"halt_bias": 3.0} if has_bias else {}  # shallow start: tokens halt early
    kind = policies.policy_class(name).kinds[0]
    model = models.build(cfg(kind, False, coda=0), policies.get(name, **knobs), vocab_size=V).eval()
    views = []
    original = model.policy.step

    def spy(memo, view):
        if view.h.requires_grad:
            view.h.retain_grad()
        views.append(view)
        return original(memo, view)

    model.policy.step = spy
    out = model(batch.tokens, batch.mask)
    early = batch.mask & (out.steps < N)
    if has_bias:
        assert early.any(), "the set-up should make some tokens halt early"
    (out.logits[batch.mask & ~early] * torch.randn_like(out.logits[batch.mask & ~early])).sum().backward()
    for b, t in early.nonzero().tolist():
        n = int(out.steps[b, t])
        grad = views[n - 1].h.grad
        assert grad is None or grad[b, t].abs().max() == 0


def test_policy_refused_when_not_causal_or_wrong_kind():
    class Peek(Policy):
        name = "test_peek"
        causal = False
        kinds = ("recurrent",)

        def step(self, memo: dict, view: View) -> Decision:
            return Decision(halt=torch.zeros_like(view.mask))

    policies.register(Peek)
    try:
        assert "test_peek" in policies.names()
        with pytest.raises(ConfigError, match="not causal"):
            models.build(cfg("recurrent", True), policies.get("test_peek"), vocab_size=9)
        with pytest.raises(ConfigError, match="does not support"):
            models.build(cfg("stacked", False), policies.get("test_peek"), vocab_size=9)
        models.build(cfg("recurrent", False), policies.get("test_peek"), vocab_size=9)
    finally:
        policies.unregister("test_peek")
    assert "test_peek" not in policies.names()


@pytest.mark.parametrize("name", policies.names())
def test_policy_declares_itself(name):
    cls = policies.policy_class(name)
    assert cls.name == name and cls.paper
    assert isinstance(cls.online, bool) and isinstance(cls.causal, bool)
    assert cls.kinds and set(cls.kinds) <= {"recurrent", "stacked", "adatape"}
    assert cls.objective in ("final", "expected", "per_step")
    policies.get(name)  # defaults are valid
    for f in dataclasses.fields(cls.Knobs):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool) and hi is not None:
            with pytest.raises(ConfigError):
                policies.get(name, **{f.name: hi + 1})
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool) and lo is not None:
            with pytest.raises(ConfigError):
                policies.get(name, **{f.name: lo - 1})
        if f.metadata.get("choices"):
            with pytest.raises(ConfigError):
                policies.get(name, **{f.name: "not-a-choice"})
    with pytest.raises(ConfigError):
        policies.get(name, no_such_knob=1)


@pytest.mark.parametrize("name", policies.names())
def test_overfits_one_batch(name):
    """A few dozen steps on one batch lower the loss (a quick learning signal per policy)."""
    torch.manual_seed(4)
    batch, V = batch_and_vocab(8)
    kind = policies.policy_class(name).kinds[0]
    model = models.build(cfg(kind, False, d_model=32, n_heads=4, d_ff=64), policies.get(name), vocab_size=V)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(batch.tokens, batch.mask)
        loss, stats = model.loss(out, batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # a policy whose loss also fits a value function (Q-halting) reports the prediction part:
        # its value targets (is the answer right yet?) move as the model learns, so the value
        # loss is not monotone over a few dozen steps
        losses.append(stats.get("prediction_loss", loss.item()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
