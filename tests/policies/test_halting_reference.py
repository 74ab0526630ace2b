"""Each policy's distribution, ponder cost, decisions and loss against slow per-token Python
loops; KL direction and underflow; the ACT remainder; gradchecks of the halting math."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.policies as policies
from ponder.models.config import ModelOutput
from ponder.policies.base import View
from ponder.policies.halting import (act_distribution, compute_regulariser, conditional_log_dist,
                                     kl_to_prior, stickbreak_distribution, threshold_step)

B, L, D, N = 2, 5, 6, 5


def states(seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(B, L, D, generator=g, dtype=torch.float64) for _ in range(N + 1)]


def make_mask() -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    return mask


def drive(policy, hs, mask, training):
    """Run the policy protocol on given states (no model): → (decisions, halting)."""
    memo = policy.start(View(n=0, max_steps=N, h=hs[0], prev=None, active=mask, mask=mask,
                             training=training))
    decisions, view = [], None
    for n in range(1, N + 1):
        view = View(n=n, max_steps=N, h=hs[n], prev=hs[n - 1], active=mask, mask=mask, training=training)
        decisions.append(policy.step(memo, view))
    return decisions, policy.finish(memo, view)


def bound(name, **knobs):
    policy = policies.get(name, **knobs)
    policy.bind(d_model=D, max_steps=N)
    torch.manual_seed(11)
    with torch.no_grad():
        for p in policy.parameters():  # random, non-degenerate heads (gates start at zero)
            p.copy_(torch.randn_like(p))
    return policy.double()


def dot(w, x) -> float:
    return sum(float(a) * float(b) for a, b in zip(w, x))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def token_mean(values: dict, mask) -> float:
    keep = [v for (b, t), v in values.items() if mask[b, t]]
    return sum(keep) / len(keep)


def tokens():
    return [(b, t) for b in range(B) for t in range(L)]


def geometric_kl(p: list[float], lambda_p: float) -> float:
    q = [(1 - lambda_p) ** n * lambda_p for n in range(len(p))]
    z = sum(q)
    return sum(pi * math.log(pi / (qi / z)) for pi, qi in zip(p, q) if pi > 0)


# -- ACT / UT-ACT ---------------------------------------------------------------------------
def act_ref(units, eps, strict):
    cum, p = 0.0, [0.0] * len(units)
    for n, u in enumerate(units):
        reach = cum + u > 1 - eps if strict else cum + u >= 1 - eps
        if reach or n == len(units) - 1:
            p[n] = 1 - cum
            return p, n + 1, 1 - cum
        p[n] = u
        cum += u


@pytest.mark.parametrize("name", ["act", "ut_act"])
@pytest.mark.parametrize("training", [True, False])
def test_act_family_matches_slow_loop(name, training):
    """ACT, and UT-ACT's ``frozen`` semantics (the t2t default: tests/policies/test_ut_act_t2t.py)."""
    policy = bound(name, tau=0.05, **({"semantics": "frozen"} if name == "ut_act" else {}))
    with torch.no_grad():
        policy.head.bias.fill_(-0.5)
        policy.head.weight.mul_(0.3)
    hs, mask = states(1), make_mask()
    decisions, halting = drive(policy, hs, mask, training)
    w, b0 = policy.head.weight.detach()[0], float(policy.head.bias.detach()[0])
    strict = name == "ut_act"
    costs, halted_at_various = {}, set()
    for b, t in tokens():
        # ACT reads the state after step n, UT the state entering step n
        src = [hs[n - 1] if strict else hs[n] for n in range(1, N + 1)]
        units = [sigmoid(dot(w, s[b, t]) + b0) for s in src]
        p, steps, rem = act_ref(units, policy.knobs.eps, strict)
        halted_at_various.add(steps)
        assert halting.halt_dist[b, t].tolist() == pytest.approx(p, abs=1e-10)
        assert int(halting.halt_step[b, t]) == steps
        costs[(b, t)] = steps + rem
        # halt decision exactly at the halting step
        assert [bool(d.halt[b, t]) for d in decisions] == [n == steps for n in range(1, N + 1)]
        # exit state: ACT's mean field Σ p(n) h^n; UT's running update from 0
        mix = [0.0] * D
        for n in range(steps):
            for k in range(D):
                h = float(hs[n + 1][b, t, k])
                mix[k] = mix[k] * (1 - p[n]) + h * p[n] if strict else mix[k] + p[n] * h
        assert decisions[steps - 1].exit_state[b, t].tolist() == pytest.approx(mix, abs=1e-10)
    assert len(halted_at_various) > 1, "the set-up should spread halting steps"
    assert float(halting.aux_loss.detach()) == pytest.approx(policy.knobs.tau * token_mean(costs, mask), abs=1e-10)


def test_act_remainder_goes_to_the_halting_step():
    units = torch.tensor([[0.3, 0.4, 0.35, 0.9, 0.5]], dtype=torch.float64)
    p, steps, rem = act_distribution(units, eps=0.01)
    assert p[0].tolist() == pytest.approx([0.3, 0.4, 0.3, 0.0, 0.0])
    assert int(steps[0]) == 3 and float(rem[0]) == pytest.approx(0.3)
    # never reaching 1 − ε: forced halt at N with the remainder there
    p, steps, rem = act_distribution(torch.full((1, 5), 0.01, dtype=torch.float64), eps=0.01)
    assert int(steps[0]) == 5 and p[0, -1].item() == pytest.approx(0.96)
    assert p.sum().item() == pytest.approx(1.0)
    # the cost's gradient flows through R only: d(N + R)/d units = -1 for earlier units
    units = units.clone().requires_grad_(True)
    p, steps, rem = act_distribution(units, eps=0.01)
    (steps.double() + rem).sum().backward()
    assert units.grad[0].tolist() == pytest.approx([-1.0, -1.0, 0.0, 0.0, 0.0])


# -- PonderNet / ANIRA-O --------------------------------------------------------------------
def conditional_ref(zs):
    p, survive = [], 1.0
    for n, z in enumerate(zs):
        lam = 1.0 if n == len(zs) - 1 else sigmoid(z)
        p.append(lam * survive)
        survive *= 1 - lam
    return p


def first_reaching(p, threshold):
    cum = 0.0
    for n, pi in enumerate(p):
        cum += pi
        if cum >= threshold - 1e-6:
            return n + 1
    return len(p)


@pytest.mark.parametrize("name", ["pondernet", "anira_o"])
@pytest.mark.parametrize("training", [True, False])
def test_conditional_halting_matches_slow_loop(name, training):
    policy = bound(name)
    with torch.no_grad():
        policy.head.bias.fill_(-1.0)
    hs, mask = states(2), make_mask()
    decisions, halting = drive(policy, hs, mask, training)
    w, b0 = policy.head.weight.detach()[0], float(policy.head.bias.detach()[0])
    kls, steps_seen = {}, set()
    for b, t in tokens():
        p = conditional_ref([dot(w, hs[n][b, t]) + b0 for n in range(1, N + 1)])
        assert halting.halt_dist[b, t].tolist() == pytest.approx(p, abs=1e-10)
        stop = first_reaching(p, policy.knobs.threshold)
        steps_seen.add(stop)
        assert int(halting.halt_step[b, t]) == stop
        halts = [bool(d.halt[b, t]) for d in decisions]
        if training:  # the expected loss needs every step: nobody halts
            assert not any(halts)
        else:
            assert halts.index(True) + 1 == stop
        kls[(b, t)] = geometric_kl(p, policy.knobs.lambda_p)
    assert len(steps_seen) > 1
    assert float(halting.aux_loss.detach()) == pytest.approx(policy.knobs.beta * token_mean(kls, mask), abs=1e-10)


# -- ANIRA-E --------------------------------------------------------------------------------
@pytest.mark.parametrize("inference", ["threshold", "argmax"])
def test_anira_early_matches_slow_loop(inference):
    policy = bound("anira_e", inference=inference)
    hs, mask = states(3), make_mask()
    decisions, halting = drive(policy, hs, mask, False)
    W, bias = policy.head.weight.detach(), policy.head.bias.detach()
    kls = {}
    for b, t in tokens():
        logits = [dot(W[n], hs[0][b, t]) + float(bias[n]) for n in range(N)]
        top = max(logits)
        e = [math.exp(x - top) for x in logits]
        p = [x / sum(e) for x in e]
        assert halting.halt_dist[b, t].tolist() == pytest.approx(p, abs=1e-10)
        stop = first_reaching(p, policy.knobs.threshold) if inference == "threshold" else p.index(max(p)) + 1
        assert int(halting.halt_step[b, t]) == stop
        assert [bool(d.halt[b, t]) for d in decisions] == [n == stop for n in range(1, N + 1)]
        kls[(b, t)] = geometric_kl(p, policy.knobs.lambda_p)
    assert float(halting.aux_loss.detach()) == pytest.approx(policy.knobs.beta * token_mean(kls, mask), abs=1e-10)


def test_anira_policies_share_objective_and_regulariser():
    """Same distribution → same aux loss and same expected loss for E and O."""
    e, o = bound("anira_e"), bound("anira_o")
    assert type(e.knobs).__mro__[1] is type(o.knobs) or type(e.knobs) is type(o.knobs)
    assert e.objective == o.objective == "expected"
    log_p = torch.log_softmax(torch.randn(B, L, N, dtype=torch.float64), -1)
    mask = make_mask()
    assert torch.equal(compute_regulariser(log_p, mask, beta=e.knobs.beta, lambda_p=e.knobs.lambda_p),
                       compute_regulariser(log_p, mask, beta=o.knobs.beta, lambda_p=o.knobs.lambda_p))
    out = fake_output(log_p.exp())
    targets = make_targets()
    assert torch.equal(e.loss(out, targets)[0], o.loss(out, targets)[0])


def test_anira_early_starts_where_online_starts():
    """ANIRA-E's bias is the distribution conditional halting with logit halt_bias gives."""
    e = policies.get("anira_e", halt_bias=-2.0)
    e.bind(d_model=D, max_steps=N)
    start = torch.softmax(e.head.bias.double(), -1)
    assert start.tolist() == pytest.approx(conditional_ref([-2.0] * N), abs=1e-6)


# -- stick-breaking -------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_stickbreak_matches_slow_loop(training):
    """The per-token bookkeeping (the recurrence with a model: tests/policies/test_stickbreak_sut.py)."""
    policy = bound("stickbreak", tau=0.1, halt_bias=1.5, stop=0.9)
    with torch.no_grad():
        policy.gate[-1].weight.mul_(0.5)
    hs, mask = states(4), make_mask()
    decisions, halting = drive(policy, hs, mask, training)
    W1, b1 = policy.gate[0].weight.detach(), policy.gate[0].bias.detach()
    W2 = policy.gate[2].weight.detach()
    depth, seen = {}, set()
    for b, t in tokens():
        p, survive, acc, stop = [0.0] * N, 1.0, [0.0] * D, N
        for n in range(N):
            h = [float(x) for x in hs[n + 1][b, t]]
            hidden = [dot(W1[j], h) + float(b1[j]) for j in range(D)]
            hidden = [0.5 * u * (1 + math.erf(u / math.sqrt(2))) for u in hidden]  # exact GELU
            z0, z1 = dot(W2[0], hidden), dot(W2[1], hidden) + 1.5
            alpha = 1.0 if n == N - 1 else 1 / (1 + math.exp(z0 - z1))
            p[n] = alpha * survive
            survive *= 1 - alpha
            if survive < 1 - policy.knobs.stop or n == N - 1:
                p[n] += survive
                survive = 0.0
            acc = [a + p[n] * x for a, x in zip(acc, h)]
            shown = [a + survive * x for a, x in zip(acc, h)]
            assert decisions[n].state is None  # the token carries its own stream
            assert decisions[n].memory[b, t].tolist() == pytest.approx(shown, abs=1e-10)
            assert decisions[n].exit_state[b, t].tolist() == pytest.approx(shown, abs=1e-10)
            if survive == 0.0:
                stop = n + 1
                break
        seen.add(stop)
        assert halting.halt_dist[b, t].tolist() == pytest.approx(p, abs=1e-10)
        assert int(halting.halt_step[b, t]) == stop
        assert [bool(d.halt[b, t]) for d in decisions] == [n == stop for n in range(1, N + 1)]
        depth[(b, t)] = sum((n + 1) * pn for n, pn in enumerate(p))
    assert len(seen) > 1
    assert float(halting.aux_loss.detach()) == pytest.approx(policy.knobs.tau * token_mean(depth, mask), abs=1e-10)


def test_fixed_distribution():
    policy = policies.get("fixed", steps=3)
    policy.bind(d_model=D, max_steps=N)
    decisions, halting = drive(policy, states(5), make_mask(), False)
    assert (halting.halt_dist[..., 2] == 1).all() and halting.halt_dist.sum().item() == B * L
    assert [bool(d.halt.all()) for d in decisions] == [False, False, True, False, False]


# -- the objectives against slow loops ------------------------------------------------------
V = 7


def make_targets() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    targets = torch.randint(0, V, (B, L), generator=g)
    targets[0, 1] = -100
    targets[1, 3:] = -100
    return targets


def fake_output(dist: torch.Tensor) -> ModelOutput:
    g = torch.Generator().manual_seed(8)
    step_logits = torch.randn(B, L, N, V, generator=g, dtype=torch.float64)
    return ModelOutput(logits=step_logits[:, :, -1], steps=torch.full((B, L), N), halt_dist=dist,
                       step_logits=step_logits)


def ce(logits, target) -> float:
    xs = [float(x) for x in logits]
    top = max(xs)
    return -(xs[target] - top - math.log(sum(math.exp(x - top) for x in xs)))


@pytest.mark.parametrize("name", [n for n in policies.names()
                                  if policies.policy_class(n).objective in ("final", "expected")])
def test_policy_loss_matches_slow_loop(name):
    """'expected': Σ_n p(n)·L_n per token, mean over scored tokens; 'final': CE of the logits.
    (Policies with their own objective — 'per_step' — test it in their own file.)"""
    policy = policies.get(name)
    dist = torch.softmax(torch.randn(B, L, N, dtype=torch.float64), -1)
    out, targets = fake_output(dist), make_targets()
    loss, _ = policy.loss(out, targets)
    per_token = {}
    for b, t in tokens():
        y = int(targets[b, t])
        if y == -100:
            continue
        if policy.objective == "expected":
            per_token[(b, t)] = sum(float(dist[b, t, n]) * ce(out.step_logits[b, t, n], y) for n in range(N))
        else:
            per_token[(b, t)] = ce(out.logits[b, t], y)
    assert float(loss.detach()) == pytest.approx(sum(per_token.values()) / len(per_token), abs=1e-8)


# -- KL, priors, underflow ------------------------------------------------------------------
def test_kl_direction_is_p_to_prior():
    p = torch.tensor([0.9, 0.09, 0.01], dtype=torch.float64)
    q = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    forward = sum(a * math.log(a / b) for a, b in zip(p.tolist(), q.tolist()))
    reverse = sum(b * math.log(b / a) for a, b in zip(p.tolist(), q.tolist()))
    got = float(kl_to_prior(p.log(), q.log()))
    assert got == pytest.approx(forward, abs=1e-12)
    assert abs(got - reverse) > 0.05


def test_kl_finite_when_p_underflows():
    log_p = torch.tensor([0.0, -math.inf, -math.inf])
    prior = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    assert float(kl_to_prior(log_p, prior)) == pytest.approx(-math.log(0.5), abs=1e-6)
    # PonderNet with a halting logit so large that p(n ≥ 2) underflows to exactly 0 in float32
    z = torch.tensor([[200.0, 0.0, 0.0, 0.0]], requires_grad=True)
    log_p = conditional_log_dist(z)
    assert log_p.exp()[0, 1:].eq(0).all()
    reg = compute_regulariser(log_p, torch.ones(1, dtype=torch.bool), beta=0.01, lambda_p=0.2)
    reg.backward()
    assert math.isfinite(float(reg.detach())) and torch.isfinite(z.grad).all()
    for zz in (50.0, -50.0):
        lp = conditional_log_dist(torch.full((3, 8), zz))
        assert torch.isfinite(lp).all()
        assert torch.allclose(lp.exp().sum(-1), torch.ones(3), atol=1e-6)


def test_truncated_geometric_prior():
    from ponder.policies.halting import geometric_log_prior
    q = geometric_log_prior(0.3, 4, dtype=torch.float64).exp()
    raw = [0.7 ** n * 0.3 for n in range(4)]
    assert q.tolist() == pytest.approx([r / sum(raw) for r in raw], abs=1e-12)


def test_threshold_step():
    dist = torch.tensor([[0.1, 0.3, 0.2, 0.4], [0.6, 0.1, 0.1, 0.2], [0.0, 0.0, 0.0, 1.0]])
    assert threshold_step(dist, 0.5).tolist() == [3, 1, 4]
    assert threshold_step(dist, 0.35).tolist() == [2, 1, 4]


# -- gradchecks of the halting math ---------------------------------------------------------
def test_gradcheck_act():
    g = torch.Generator().manual_seed(9)
    z = (torch.randn(3, 6, generator=g, dtype=torch.float64) - 1.0)
    h = torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    units = torch.sigmoid(z)
    cum = units.cumsum(-1)
    assert ((cum - 0.99).abs() > 1e-3).all()  # away from the (discontinuous) threshold
    z.requires_grad_(True)
    h.requires_grad_(True)

    def f(z, h):
        p, steps, rem = act_distribution(torch.sigmoid(z), eps=0.01)
        return p, rem, (p[..., None] * h).sum(-2)

    assert torch.autograd.gradcheck(f, (z, h))


def test_gradcheck_pondernet():
    g = torch.Generator().manual_seed(10)
    z = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, True, False])

    def f(z):
        log_p = conditional_log_dist(z)
        return log_p.exp(), compute_regulariser(log_p, mask, beta=0.05, lambda_p=0.3)

    assert torch.autograd.gradcheck(f, (z,))


def test_gradcheck_stickbreak():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(3, 6, 2, generator=g, dtype=torch.float64)
    alpha = torch.softmax(z, -1)[..., 1]
    left = (1 - alpha).cumprod(-1)
    assert ((left - 0.001).abs() > 1e-4).all()
    z.requires_grad_(True)

    def f(z):
        p, steps = stickbreak_distribution(torch.softmax(z, -1)[..., 1], stop=0.999)
        return p

    assert torch.autograd.gradcheck(f, (z,))
    # with a gate that stops early (remaining mass < 0.001 after step 2)
    z2 = torch.zeros(2, 6, 2, dtype=torch.float64)
    z2[..., 1] = 4.0
    z2 = z2 + 0.1 * torch.randn(2, 6, 2, generator=g, dtype=torch.float64)
    p, steps = stickbreak_distribution(torch.softmax(z2, -1)[..., 1], stop=0.999)
    assert (steps < 6).all() and torch.allclose(p.sum(-1), torch.ones(2, dtype=torch.float64))
    assert torch.autograd.gradcheck(f, (z2.requires_grad_(True),))
