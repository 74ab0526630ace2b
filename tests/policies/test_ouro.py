"""ouro: the stage-II labels and BCE against a per-token, per-step Python loop (float64, pads
and unscored tokens), the gate's loss training the gate only, stage I equal to pondernet with
the uniform prior, and the inference exit of each gate by hand."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
from ponder.models.config import ModelConfig
from ponder.policies.base import Policy

N = 4


def build(policy, *, max_steps=N, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=max_steps, positions="none",
                      execution="dense")
    return models.build(cfg, policy, vocab_size=11).double()


def batch():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 11, (3, 6), generator=g)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, 4:] = False
    targets = torch.randint(1, 11, (3, 6), generator=g)
    targets[1, 4:] = -100   # pads
    targets[0, :2] = -100   # real but unscored
    return tokens, mask, targets


def ce(logits: list[float], y: int) -> float:
    top = max(logits)
    return -(logits[y] - top - math.log(sum(math.exp(x - top) for x in logits)))


def test_stage2_loss_matches_a_slow_loop():
    k, gamma, weight = 30.0, 0.02, 0.7
    model = build(policies.get("ouro", k=k, gamma=gamma, gate_weight=weight))
    model.train()
    tokens, mask, targets = batch()
    out = model(tokens, mask)
    loss, stats = model.loss(out, targets)
    stage1 = build(policies.get("ouro", k=k, gamma=gamma, gate_weight=0.0))
    stage1.train()
    base, _ = stage1.loss(stage1(tokens, mask), targets)
    z = out.extras["policy_carry"]["gate2"].detach()
    terms = []
    for b in range(3):
        for t in range(6):
            y = int(targets[b, t])
            if y == -100:
                continue
            L = [ce(out.step_logits[b, t, n].tolist(), y) for n in range(N)]
            for n in range(1, N):
                w = 1 / (1 + math.exp(-k * (max(0.0, L[n - 1] - L[n]) - gamma)))
                cont = 1 / (1 + math.exp(float(z[b, t, n])))          # 1 − μ
                terms.append(-(w * math.log(cont) + (1 - w) * math.log(1 - cont)))
    gate = sum(terms) / len(terms)
    assert stats["gate2_loss"] == pytest.approx(gate, abs=1e-10)
    assert float(loss.detach()) == pytest.approx(float(base.detach()) + weight * gate, abs=1e-10)


def test_the_gate_loss_trains_the_gate_only():
    model = build(policies.get("ouro", beta=0.0, gate_weight=1.0))
    model.train()
    tokens, mask, targets = batch()
    out = model(tokens, mask)
    loss, _ = model.loss(out, targets)
    task, _ = Policy.loss(model.policy, out, targets)  # the stage-I expected loss alone
    (loss - task - out.aux_loss).backward()
    for name, p in model.named_parameters():
        if name.startswith("policy.gate2"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or not p.grad.any(), name


def test_stage1_is_pondernet_with_the_uniform_prior():
    tokens, mask, targets = batch()
    ouro = build(policies.get("ouro", gate_weight=0.0, exit="stage1"))
    pn = build(policies.get("pondernet", prior="uniform"))
    for m in (ouro, pn):
        m.train()
    lo, _ = ouro.loss(ouro(tokens, mask), targets)
    lp, _ = pn.loss(pn(tokens, mask), targets)
    torch.testing.assert_close(lo, lp, rtol=0, atol=1e-12)
    ouro.eval(), pn.eval()
    a, b = ouro(tokens, mask), pn(tokens, mask)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-12)


@pytest.mark.parametrize("exit,expected", [("stage2", 4), ("stage1", 2)])
def test_inference_exit_of_each_gate(exit, expected):
    """Constant gates: μ = 0.2 (CDF 1 − 0.8^t reaches 0.5 at t = 4), λ = 0.3 (1 − 0.7^t: t = 2)."""
    model = build(policies.get("ouro", exit=exit), max_steps=6)
    with torch.no_grad():
        for head, p in ((model.policy.gate2, 0.2), (model.policy.head, 0.3)):
            head.weight.zero_()
            head.bias.fill_(math.log(p / (1 - p)))
    model.eval()
    tokens, mask, _ = batch()
    out = model(tokens, mask)
    assert bool((out.steps[mask] == expected).all()) and bool((out.steps[~mask] == 0).all())
    model.train()
    assert bool((model(tokens, mask).halt_step[mask] == expected).all())
