"""The early-exit policies (lac, confidence, patience, dat) and Learn-then-Test calibration
against slow per-token Python loops and hand-made cases."""

from __future__ import annotations

import math
import random

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
import ponder.tasks as tasks
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig, ModelOutput
from ponder.policies.base import View
from ponder.policies.calibration import (binomial_p_value, calibrate_threshold,
                                        fixed_sequence_test)
from ponder.policies.confidence import decayed_threshold
from ponder.policies.dat import oracle_steps

B, L, D, N, V = 2, 5, 6, 5, 4
EXIT_POLICIES = ("lac", "confidence", "patience", "dat")


# -- driving a policy on given states (no model) ---------------------------------------------
def states(seed: int = 0, scale: float = 1.0, n_steps: int = N) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(B, L, D, generator=g, dtype=torch.float64) for _ in range(n_steps + 1)]


def make_mask() -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    return mask


def readout_matrix(seed: int = 5) -> torch.Tensor:
    return torch.randn(D, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def drive(policy, hs, mask, training, readout=None):
    """The engine's calls without a model (and without freezing): → (halts per step, Halting)."""
    n_steps = len(hs) - 1
    kw = dict(max_steps=n_steps, active=mask, mask=mask, training=training, readout=readout)
    memo = policy.start(View(n=0, h=hs[0], prev=None, **kw))
    halts, view = [], None
    for n in range(1, n_steps + 1):
        view = View(n=n, h=hs[n], prev=hs[n - 1], **kw)
        halts.append(policy.step(memo, view).halt.clone())
    return halts, policy.finish(memo, view)


def bound(name, n_steps=N, d_model=D, **knobs):
    policy = policies.get(name, **knobs)
    policy.bind(d_model=d_model, max_steps=n_steps)
    torch.manual_seed(11)
    with torch.no_grad():
        for p in policy.parameters():  # random, non-degenerate heads
            p.copy_(torch.randn_like(p))
    return policy.double()


def check_halts(halts, halt_step, training):
    """Training: nobody halts; eval: halted after step n ⇔ halt_step ≤ n."""
    for n, halt in enumerate(halts, start=1):
        expected = torch.zeros_like(halt) if training else halt_step <= n
        assert torch.equal(halt.bool(), expected), n


def first_or_last(flags: list[bool]) -> int:
    """1-based index of the first True, or len(flags)."""
    return next((i + 1 for i, f in enumerate(flags) if f), len(flags))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def vec(x) -> list[float]:
    return [float(v) for v in x.detach()] if isinstance(x, torch.Tensor) else [float(v) for v in x]


def norm(x) -> float:
    return math.sqrt(sum(v * v for v in vec(x)))


def probs(logits) -> list[float]:
    z = vec(logits)
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


# -- LAC ------------------------------------------------------------------------------------
def lac_public(norms: list[float], alpha: float) -> int:
    """Float64 transcription of the public rule, per token: manishemirani/L2-Norm-Guided-
    Adaptive-Computation, scenic/projects/lac/lac_uvit.py (``LacStep.__call__`` carries
    previous_norm, previous_delta_norm, delta_norm, the zero-filled ``delta_norms`` slots and the
    threshold; ``UTEncoder.stop_fn`` tests |delta_norm| < threshold before each layer).
    ``norms[s]`` is ‖h^s‖ (s = 0 the input); → layers run (the step the token stops at)."""
    n_layers = len(norms) - 1
    previous_norm, previous_delta, delta, threshold = norms[0], 0.0, 0.0, 0.0
    slots = [0.0] * n_layers
    for step in range(n_layers):
        if step > 0 and abs(delta) < threshold:  # stop_fn: skip this and every later layer
            return step
        state_norm = norms[step]                   # the state entering layer step + 1
        slots[step] = previous_delta
        threshold = abs(max(slots) - min(slots)) * alpha
        delta = state_norm - previous_norm
        previous_norm, previous_delta = state_norm, delta
    return n_layers


def lac_reference(hs, b, t, alpha) -> int:
    return lac_public([norm(h[b, t]) for h in hs], alpha)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("alpha", [0.3, 0.8, 2.0])
def test_lac_matches_per_token_loop(training, alpha):
    hs, mask = states(1, n_steps=8), make_mask()
    # random norms that grow and shrink: scale each step's states per token
    g = torch.Generator().manual_seed(2)
    hs = [h * (0.5 + 2 * torch.rand(B, L, 1, generator=g, dtype=torch.float64)) for h in hs]
    halts, halting = drive(bound("lac", n_steps=8, alpha=alpha), hs, mask, training)
    ref = torch.tensor([[lac_reference(hs, b, t, alpha) for t in range(L)] for b in range(B)])
    assert torch.equal(halting.halt_step, ref)
    assert len(set(ref.flatten().tolist())) > 1  # a non-trivial case
    check_halts(halts, ref, training)
    assert torch.equal(halting.halt_dist.argmax(-1) + 1, ref)
    assert torch.allclose(halting.halt_dist.sum(-1), torch.ones(()).double())


def test_lac_matches_public_rule_on_many_trajectories():
    """2,000 random norm trajectories (N = 8): the policy stops exactly where the public loop
    does (the rule before this fix agreed on 133 of these)."""
    g = torch.Generator().manual_seed(3)
    n_tok, n_steps = 2000, 8
    norms = (torch.rand(n_steps + 1, n_tok, generator=g, dtype=torch.float64) * 4 + 0.5).cumsum(0)
    norms = norms * (1 + 0.6 * torch.randn(n_steps + 1, n_tok, generator=g, dtype=torch.float64).tanh())
    direction = torch.randn(1, n_tok, D, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    hs = [r[None, :, None] * direction for r in norms]
    mask = torch.ones(1, n_tok, dtype=torch.bool)
    _, halting = drive(bound("lac", n_steps=n_steps), hs, mask, training=False)
    ref = torch.tensor([lac_public(norms[:, i].tolist(), 0.8) for i in range(n_tok)])
    assert torch.equal(halting.halt_step[0], ref)
    assert len(set(ref.tolist())) >= 4


def norm_states(norms: list[float]) -> list[torch.Tensor]:
    """One token (B = L = 1) whose state after step n has norm ``norms[n]`` (random directions)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for r in norms:
        d = torch.randn(1, 1, D, generator=g, dtype=torch.float64)
        out.append(r * d / d.norm())
    return out


@pytest.mark.parametrize("norms,expected", [
    # Δ = 2, 1, 0.1: after step 3 the test reads Δ_2 = 1 against 0.8·range{0, 2}; fires
    ([1.0, 3.0, 4.0, 4.1, 4.2], 3),
    # Δ = 2, 0.1, 1.9, 4: after 3, |0.1| < 0.8·2 fires (one step late: Δ_2 was the small one)
    ([1.0, 3.0, 3.1, 5.0, 9.0], 3),
    # shrinking norms, Δ = −2, −0.1: the zero slot makes the range 2; |−0.1| < 1.6 after 3
    ([5.0, 3.0, 2.9, 1.0, 0.5], 3),
    ([1.0, 1.0, 1.0, 1.0, 1.0], 4),      # no change at all: the range is 0, never fires → N
    # constant growth Δ = 1: the zero slot gives range 1, and |1| ≮ 0.8 → never fires
    ([1.0, 2.0, 3.0, 4.0, 5.0], 4),
    # Δ = 1, .5, .9, .1, 1.5: after 3 |.5| < .8 fires
    ([1.0, 2.0, 2.5, 3.4, 3.5, 5.0], 3),
    # Δ = 1, 1, 1, 0.05, 1: |1| ≮ .8 until after step 5 reads Δ_4 = 0.05 < .8
    ([1.0, 2.0, 3.0, 4.0, 4.05, 5.05, 6.0], 5),
])
def test_lac_stop_rule_on_hand_made_norms(norms, expected):
    assert lac_public(norms, 0.8) == expected
    hs = norm_states(norms)
    mask = torch.ones(1, 1, dtype=torch.bool)
    policy = bound("lac", n_steps=len(norms) - 1)
    _, halting = drive(policy, hs, mask, training=False)
    assert int(halting.halt_step) == expected


def test_lac_never_stops_before_the_third_step():
    """The lag and the zero slots: after steps 1 and 2 the tested delta is compared with a range
    of zeros, so even a huge α exits at n = 3 at the earliest."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    _, halting = drive(bound("lac", n_steps=4, alpha=100.0), norm_states([2.0, 3.0, 3.5, 4.0, 6.0]), mask, False)
    assert int(halting.halt_step) == 3
    # a constant norm never fires (range 0), whatever α
    _, halting = drive(bound("lac", n_steps=4, alpha=100.0), norm_states([2.0] * 5), mask, False)
    assert int(halting.halt_step) == 4


# -- confidence (CALM) --------------------------------------------------------------------------
def calm_reference(hs, W, b, t, measure, lam, policy, decay=False, T=64) -> int:
    thr = 0.9 * lam + 0.1 * lam * math.exp(-4 * t / T) if decay else lam
    flags = []
    for n in range(1, len(hs)):
        h, prev = vec(hs[n][b, t]), vec(hs[n - 1][b, t])
        if measure == "softmax":
            p = sorted(probs([sum(h[i] * float(W[i, j]) for i in range(D)) for j in range(V)]))
            c = p[-1] - p[-2]
        elif measure == "saturation":
            c = sum(x * y for x, y in zip(h, prev)) / (norm(h) * norm(prev))
        else:
            w, bias = policy.exit_head.weight[0].detach(), float(policy.exit_head.bias[0].detach())
            c = sigmoid(sum(float(wi) * x for wi, x in zip(w, h)) + bias)
        flags.append(c >= thr)
    return first_or_last(flags)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("measure,lam,decay", [("softmax", 0.5, False), ("softmax", 0.6, True),
                                               ("saturation", 0.2, False), ("classifier", 0.7, False),
                                               ("classifier", 0.7, True)])
def test_confidence_matches_per_token_loop(training, measure, lam, decay):
    hs, mask, W = states(3), make_mask(), readout_matrix()
    policy = bound("confidence", measure=measure, threshold=lam, decay=decay, decay_length=3)
    halts, halting = drive(policy, hs, mask, training, readout=lambda h: h @ W)
    ref = torch.tensor([[calm_reference(hs, W, b, t, measure, lam, policy, decay, 3) for t in range(L)]
                        for b in range(B)])
    assert torch.equal(halting.halt_step, ref)
    assert len(set(ref.flatten().tolist())) > 1
    check_halts(halts, ref, training)


def test_confidence_decides_per_token():
    """Two tokens of one sequence, scripted logits: one is confident after step 1, the other
    only after step 3; each exits at its own step (a per-batch decision would not)."""
    n_steps = 4
    logits = torch.zeros(n_steps + 1, 1, 2, V, dtype=torch.float64)
    logits[1:, 0, 0, 0] = 10.0          # token 0: confident from step 1
    logits[3:, 0, 1, 2] = 10.0          # token 1: confident from step 3
    hs = [torch.cat([x, torch.zeros(1, 2, D - V, dtype=torch.float64)], -1) for x in logits]
    eye = torch.eye(D, V, dtype=torch.float64)
    policy = bound("confidence", n_steps=n_steps, threshold=0.9)
    mask = torch.ones(1, 2, dtype=torch.bool)
    halts, halting = drive(policy, hs, mask, False, readout=lambda h: h @ eye)
    assert halting.halt_step.tolist() == [[1, 3]]
    assert halts[0].tolist() == [[True, False]] and halts[2].tolist() == [[True, True]]


def test_confidence_tokens_exit_at_different_steps_in_a_model():
    """λ = the median step-1 margin: about half of the tokens exit after step 1 (their step 1
    is the same in training and eval), the others later — inside the same sequences."""
    torch.manual_seed(0)
    batch, vocab = list_rank_batch(6)
    model = models.build(small_cfg(max_steps=6), policies.get("confidence"), vocab_size=vocab)
    with torch.no_grad():
        first = model(batch.tokens, batch.mask).step_logits[:, :, 0].softmax(-1).topk(2, -1).values
    margin = (first[..., 0] - first[..., 1]).double()
    lam = float(margin[batch.mask].median())
    model.policy.threshold_override = lam
    out = model.eval()(batch.tokens, batch.mask)
    m = batch.mask
    assert torch.equal(out.steps[m] == 1, margin[m] >= lam)
    assert (out.steps[m] > 1).any()
    assert any(len(set(out.steps[b][m[b]].tolist())) > 1 for b in range(batch.tokens.shape[0]))


def test_decay_formula():
    lam, T = 0.8, 10
    t = torch.arange(0, 50)
    got = decayed_threshold(lam, t, T)
    for ti in (0, 1, 5, 10, 49):
        assert float(got[ti]) == pytest.approx(0.9 * lam + 0.1 * lam * math.exp(-4 * ti / T), abs=1e-12)
    assert float(got[0]) == pytest.approx(lam)
    assert (got[1:] < got[:-1]).all() and float(got[-1]) > 0.9 * lam


def test_decay_lets_later_positions_exit_at_the_same_confidence():
    """A confidence between 0.9λ and λ exits at late positions only (decay on), nowhere (off)."""
    n_steps, Lq = 2, 6
    policy_on = bound("confidence", n_steps=n_steps, measure="saturation", threshold=1.0,
                      decay=True, decay_length=2)
    policy_off = bound("confidence", n_steps=n_steps, measure="saturation", threshold=1.0)
    # every token: cos(h^1, h^0) = 0.95 (between 0.9 and 1)
    a = torch.zeros(1, Lq, D, dtype=torch.float64)
    a[..., 0] = 1.0
    c = torch.zeros(1, Lq, D, dtype=torch.float64)
    c[..., 0], c[..., 1] = 0.95, math.sqrt(1 - 0.95 ** 2)
    hs, mask = [a, c, c], torch.ones(1, Lq, dtype=torch.bool)
    thr = [0.9 + 0.1 * math.exp(-4 * t / 2) for t in range(Lq)]
    expected = [1 if 0.95 >= x else 2 for x in thr]
    assert 1 in expected and 2 in expected
    assert drive(policy_on, hs, mask, False)[1].halt_step.tolist() == [expected]
    assert drive(policy_off, hs, mask, False)[1].halt_step.tolist() == [[2] * Lq]


def test_confidence_classifier_bce_matches_loop():
    hs, mask, W = states(4), make_mask(), readout_matrix()
    policy = bound("confidence", measure="classifier", classifier_weight=0.5)
    _, halting = drive(policy, hs, mask, True, readout=lambda h: h @ W)
    w, bias = policy.exit_head.weight[0].detach(), float(policy.exit_head.bias[0].detach())
    total, count = 0.0, 0
    for b in range(B):
        for t in range(L):
            if not mask[b, t]:
                continue
            preds = [int((hs[n][b, t] @ W).argmax()) for n in range(1, N + 1)]
            bce = 0.0
            for n in range(1, N):
                z = sum(float(wi) * float(x) for wi, x in zip(w, hs[n][b, t])) + bias
                y = 1.0 if preds[n - 1] == preds[-1] else 0.0
                bce -= y * math.log(sigmoid(z)) + (1 - y) * math.log(1 - sigmoid(z))
            total, count = total + bce / (N - 1), count + 1
    assert float(halting.aux_loss.detach()) == pytest.approx(0.5 * total / count, rel=1e-5)
    halting.aux_loss.backward()
    assert policy.exit_head.weight.grad.abs().sum() > 0
    # eval: no full-depth prediction to learn from, no loss
    assert drive(policy, hs, mask, False, readout=lambda h: h @ W)[1].aux_loss is None


# -- patience (PaBEE) ---------------------------------------------------------------------------
def patience_reference(preds: list[int], patience: int) -> int:
    count = 0
    for n in range(1, len(preds)):
        count = count + 1 if preds[n] == preds[n - 1] else 0
        if count >= patience:
            return n + 1
    return len(preds)


@pytest.mark.parametrize("preds,patience,expected", [
    ([1, 1, 2, 2, 2, 3], 2, 5), ([1, 1, 2, 2, 2, 3], 1, 2), ([0, 1, 2, 3, 0, 1], 1, 6),
    ([3, 3, 3, 3, 3, 3], 5, 6), ([3, 3, 3, 3, 3, 3], 6, 6), ([2, 0, 0, 0, 1, 1], 2, 4)])
def test_patience_counting(preds, patience, expected):
    assert patience_reference(preds, patience) == expected  # the loop itself, on hand-made cases
    n_steps = len(preds)
    hs = [torch.zeros(1, 1, D, dtype=torch.float64)]
    for p in preds:
        h = torch.zeros(1, 1, D, dtype=torch.float64)
        h[..., p] = 5.0
        hs.append(h)
    eye = torch.eye(D, V, dtype=torch.float64)
    policy = bound("patience", n_steps=n_steps, patience=patience)
    _, halting = drive(policy, hs, torch.ones(1, 1, dtype=torch.bool), False, readout=lambda h: h @ eye)
    assert int(halting.halt_step) == expected


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("patience", [1, 2])
def test_patience_matches_per_token_loop(training, patience):
    n_steps = 8
    hs, mask = states(6, n_steps=n_steps), make_mask()
    W = readout_matrix(7)[:, :2]  # two classes: predictions repeat often
    policy = bound("patience", n_steps=n_steps, patience=patience)
    halts, halting = drive(policy, hs, mask, training, readout=lambda h: h @ W)
    ref = torch.tensor([[patience_reference([int((hs[n][b, t] @ W).argmax()) for n in range(1, n_steps + 1)],
                                            patience) for t in range(L)] for b in range(B)])
    assert torch.equal(halting.halt_step, ref)
    assert len(set(ref.flatten().tolist())) > 1
    check_halts(halts, ref, training)


# -- DAT ----------------------------------------------------------------------------------------
def dat_reference(policy, hs, b, t):
    """(q over 1..N by products, χ per layer) for one token."""
    chis = []
    for n in range(1, N):
        z = sum(float(w) * float(x) for w, x in zip(policy.halt_weight[n - 1].detach(), hs[n][b, t]))
        chis.append(sigmoid(z + float(policy.halt_bias[n - 1].detach())))
    q, survive = [], 1.0
    for chi in chis:
        q.append(chi * survive)
        survive *= 1 - chi
    q.append(survive)
    return q, chis


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("rule,threshold", [("chi", 0.5), ("chi", 0.3), ("cumulative", 0.5)])
def test_dat_matches_per_token_loop(training, rule, threshold):
    hs, mask = states(8), make_mask()
    policy = bound("dat", rule=rule, threshold=threshold)
    with torch.no_grad():
        policy.halt_bias.zero_()
    halts, halting = drive(policy, hs, mask, training)
    ref_step = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        for t in range(L):
            q, chis = dat_reference(policy, hs, b, t)
            assert halting.halt_dist[b, t].tolist() == pytest.approx(q, abs=1e-9)
            assert sum(q) == pytest.approx(1.0)
            if rule == "chi":
                ref_step[b, t] = first_or_last([c >= threshold for c in chis] + [True])
            else:
                ref_step[b, t] = first_or_last([sum(q[:n + 1]) >= threshold - 1e-6 for n in range(N)])
    assert torch.equal(halting.halt_step, ref_step)
    assert len(set(ref_step.flatten().tolist())) > 1
    check_halts(halts, ref_step, training)


def test_dat_q_sums_to_one_at_extreme_logits():
    for bias in (-60.0, 60.0):
        policy = bound("dat", halt_bias=bias)
        with torch.no_grad():
            policy.halt_bias.fill_(bias)
        _, halting = drive(policy, states(9, scale=100.0), make_mask(), True)
        assert torch.isfinite(halting.halt_dist).all()
        assert torch.allclose(halting.halt_dist.sum(-1), torch.ones(()).double(), atol=1e-9)


def step_logits_from_preds(preds: list[list[int]]) -> torch.Tensor:
    """Per-token lists of per-layer predictions → step_logits [1, T, N, V]."""
    x = torch.zeros(1, len(preds), len(preds[0]), V)
    for t, ps in enumerate(preds):
        for n, p in enumerate(ps):
            x[0, t, n, p] = 3.0
    return x


def test_dat_oracle_labels():
    preds = [[3, 1, 2, 2], [2, 1, 2, 2], [1, 1, 1, 3], [0, 3, 3, 3], [1, 2, 1, 2]]
    targets = torch.tensor([[2, 2, 0, -100, 2]])
    sl = step_logits_from_preds(preds)
    # correct: first layer that predicts the target (N if none; unscored → final)
    assert oracle_steps(sl, targets, "correct").tolist() == [[3, 1, 4, 2, 2]]
    # final: first layer that predicts what the last layer predicts
    assert oracle_steps(sl, targets, "final").tolist() == [[3, 1, 4, 2, 2]]
    targets2 = torch.tensor([[3, 1, 1, 0, 1]])
    assert oracle_steps(sl, targets2, "correct").tolist() == [[1, 2, 1, 1, 1]]


@pytest.mark.parametrize("oracle,weighting,gamma", [("correct", "uniform", 1.0), ("final", "linear", 0.3)])
def test_dat_loss_matches_loop(oracle, weighting, gamma):
    hs, mask = states(10), make_mask()
    policy = bound("dat", oracle=oracle, weighting=weighting, gamma=gamma)
    _, halting = drive(policy, hs, mask, True)
    g = torch.Generator().manual_seed(12)
    step_logits = torch.randn(B, L, N, V, generator=g)
    targets = torch.randint(0, V, (B, L), generator=g)
    targets[0, 1] = -100
    targets[~mask] = -100
    out = ModelOutput(logits=step_logits[:, :, -1], steps=torch.full((B, L), N), halt_dist=halting.halt_dist,
                      step_logits=step_logits, mask=mask)
    loss, stats = policy.loss(out, targets)
    w = [1.0] * N if weighting == "uniform" else [float(n) for n in range(1, N + 1)]
    layer_total, scored, exit_total, real = 0.0, 0, 0.0, 0
    for b in range(B):
        for t in range(L):
            if not mask[b, t]:
                continue
            preds = [int(step_logits[b, t, n].argmax()) for n in range(N)]
            tgt = int(targets[b, t])
            if tgt != -100:
                ce = [-math.log(probs(step_logits[b, t, n])[tgt]) for n in range(N)]
                layer_total += sum(wi * c for wi, c in zip(w, ce)) / sum(w)
                scored += 1
            good = ([p == tgt for p in preds] if oracle == "correct" and tgt != -100
                    else [p == preds[-1] for p in preds])
            n_star = first_or_last(good)
            q, _ = dat_reference(policy, hs, b, t)
            exit_total -= math.log(q[n_star - 1])
            real += 1
    expected = layer_total / scored + gamma * exit_total / real
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert stats["oracle_ce"] == pytest.approx(exit_total / real, rel=1e-5)
    loss.backward()
    assert policy.halt_weight.grad.abs().sum() > 0


def test_dat_oracle_loss_survives_underflow():
    """q(n*) below float range: −log q(n*) stays finite and keeps its gradient (log space)."""
    policy = bound("dat", oracle="final")
    policy.float()
    with torch.no_grad():
        policy.halt_bias.fill_(200.0)   # χ ≈ 1 at layer 1: q(n > 1) underflows
        policy.halt_weight.zero_()
    hs = [h.float() for h in states(13)]
    mask = make_mask()
    _, halting = drive(policy, hs, mask, True)
    step_logits = torch.zeros(B, L, N, V)
    step_logits[..., 0, 1] = 3.0
    step_logits[..., 1:, 2] = 3.0           # oracle (final) = layer 2, where q ≈ e^{-200}
    out = ModelOutput(logits=step_logits[:, :, -1], steps=torch.full((B, L), N), halt_dist=halting.halt_dist,
                      step_logits=step_logits, mask=mask)
    assert (halting.halt_dist[..., 1] == 0).all()   # underflowed in q itself
    loss, stats = policy.loss(out, torch.full((B, L), 2))
    assert math.isfinite(float(loss.detach())) and stats["oracle_ce"] == pytest.approx(200.0, rel=1e-3)
    loss.backward()
    assert torch.isfinite(policy.halt_bias.grad).all() and policy.halt_bias.grad[0] > 0


# -- the per-exit objective, in the model ---------------------------------------------------------
def list_rank_batch(n: int = 6, seed: int = 0):
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    return tasks.collate([task.example("train", seed + i) for i in range(n)], vocab), len(vocab)


def small_cfg(**kw) -> ModelConfig:
    base = dict(d_model=16, n_heads=2, d_ff=32, prelude=1, core=1, coda=1, max_steps=4, positions="none")
    base.update(kw)
    return ModelConfig(**base)


def per_exit_reference(step_logits, targets, weights) -> float:
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            tgt = int(targets[b, t])
            if tgt == -100:
                continue
            ce = [-math.log(probs(step_logits[b, t, n])[tgt]) for n in range(step_logits.shape[2])]
            total += sum(w * c for w, c in zip(weights, ce)) / sum(weights)
            count += 1
    return total / count


@pytest.mark.parametrize("name,knobs", [("lac", {}), ("confidence", {}), ("confidence", {"measure": "classifier"}),
                                        ("patience", {"patience": 1})])
def test_per_exit_loss_and_training_decisions_in_a_model(name, knobs):
    """Training: every token runs N steps, the loss is Σ_n n·CE_n / Σ_n n, the prediction is
    the readout at the step the rule picks, and that step follows the per-step readouts."""
    torch.manual_seed(1)
    batch, vocab = list_rank_batch()
    n_steps = 5
    model = models.build(small_cfg(kind="stacked", max_steps=n_steps), policies.get(name, **knobs),
                         vocab_size=vocab)
    out = model(batch.tokens, batch.mask)
    assert (out.steps[batch.mask] == n_steps).all()
    loss, stats = model.loss(out, batch.targets)
    expected = per_exit_reference(out.step_logits.detach(), batch.targets, list(range(1, n_steps + 1)))
    assert stats["task_loss"] == pytest.approx(expected, rel=1e-5)
    idx = (out.halt_step - 1)[..., None, None].expand(-1, -1, 1, vocab)
    assert torch.equal(out.logits, out.step_logits.gather(2, idx).squeeze(2))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad  # the exit classifier too (through its BCE aux loss)
    if knobs.get("measure") == "classifier":
        assert stats["aux_loss"] > 0
        # its input is detached: the BCE alone sends no gradient into the backbone
        model.zero_grad()
        model(batch.tokens, batch.mask).aux_loss.backward()
        assert all(p.grad is None or p.grad.abs().sum() == 0
                   for n, p in model.named_parameters() if not n.startswith("policy."))
    if name == "patience":
        for b, t in batch.mask.nonzero().tolist():
            preds = [int(out.step_logits[b, t, n].argmax()) for n in range(n_steps)]
            assert int(out.halt_step[b, t]) == patience_reference(preds, 1)
    if name == "confidence" and not knobs:
        for b, t in batch.mask.nonzero().tolist():
            flags = []
            for n in range(n_steps):
                p = sorted(probs(out.step_logits[b, t, n]))
                flags.append(p[-1] - p[-2] >= 0.9)
            assert int(out.halt_step[b, t]) == first_or_last(flags)


def test_eval_freezes_at_the_rule_and_loss_falls_back_to_the_exit_readout():
    torch.manual_seed(2)
    batch, vocab = list_rank_batch()
    model = models.build(small_cfg(kind="stacked", max_steps=6), policies.get("patience", patience=1),
                         vocab_size=vocab).eval()
    out = model(batch.tokens, batch.mask)
    assert out.step_logits is None
    assert torch.equal(out.steps[batch.mask], out.halt_step[batch.mask])
    assert (out.steps[batch.mask] < 6).any()
    loss, _ = model.loss(out, batch.targets)
    ce = torch.nn.functional.cross_entropy(out.logits[batch.targets != -100], batch.targets[batch.targets != -100])
    assert float(loss.detach()) == pytest.approx(float(ce.detach()), rel=1e-6)


def test_knobs_are_validated():
    for name, bad in [("lac", {"alpha": -0.1}), ("confidence", {"threshold": 1.5}),
                      ("confidence", {"measure": "entropy"}), ("confidence", {"decay": 1}),
                      ("confidence", {"decay_length": 0}), ("patience", {"patience": 0}),
                      ("patience", {"patience": 1.5}), ("dat", {"oracle": "best"}),
                      ("dat", {"rule": "argmax"}), ("dat", {"threshold": 0.0})]:
        with pytest.raises(ConfigError):
            policies.get(name, **bad)


def test_declarations():
    for name in EXIT_POLICIES:
        cls = policies.policy_class(name)
        assert cls.online and cls.causal and cls.objective == "per_step" and cls.paper
    assert "stacked" in policies.policy_class("dat").kinds
    assert set(policies.policy_class("dat").kinds) == {"stacked", "recurrent"}


# -- Learn-then-Test ----------------------------------------------------------------------------
def binom_cdf_reference(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


def test_binomial_p_value_matches_the_sum():
    for k, n, d in [(0, 10, 0.1), (3, 50, 0.1), (20, 100, 0.15), (7, 30, 0.5)]:
        assert binomial_p_value(k, n, d) == pytest.approx(binom_cdf_reference(k, n, d), rel=1e-9)


def synthetic_counts(rng: random.Random, lams: list[float], n: int) -> list[int]:
    """Disagreement rate falls with λ: r(λ) = 0.4·(1 − λ)²."""
    return [sum(rng.random() < 0.4 * (1 - lam) ** 2 for _ in range(n)) for lam in lams]


def test_ltt_picks_a_threshold_with_low_disagreement():
    rng = random.Random(0)
    lams = [i / 20 for i in range(21)]
    n, delta, eps = 2000, 0.1, 0.05
    counts = synthetic_counts(rng, lams, n)
    result = fixed_sequence_test(lams, counts, n, delta=delta, epsilon=eps)
    lam = result.threshold
    assert lam is not None and counts[lams.index(lam)] / n <= delta
    # fixed sequence: tested from the top, all rejected until the first that is not
    assert [t[0] for t in result.tested] == sorted(lams, reverse=True)[: len(result.tested)]
    assert all(t[3] for t in result.tested[:-1])
    assert result.tested[-1][0] == lam or not result.tested[-1][3]
    # the answer is the smallest certified λ: the next one down is not certified
    below = [x for x in lams if x < lam]
    if below:
        nxt = max(below)
        assert binom_cdf_reference(counts[lams.index(nxt)], n, delta) > eps
    # true risk 0.4(1−λ)² ≤ δ ⇔ λ ≥ 0.5: the pick is close above it
    assert 0.5 <= lam <= 0.65


def test_ltt_guarantee_holds_over_repeated_draws():
    """P[true risk of the pick > δ] ≤ ε (checked over 200 calibration sets)."""
    rng = random.Random(1)
    lams = [i / 40 for i in range(41)]
    n, delta, eps = 300, 0.1, 0.1
    bad = 0
    for _ in range(200):
        lam = fixed_sequence_test(lams, synthetic_counts(rng, lams, n), n, delta=delta, epsilon=eps).threshold
        if lam is not None and 0.4 * (1 - lam) ** 2 > delta:
            bad += 1
    assert bad / 200 <= eps + 0.03


def test_ltt_returns_none_when_nothing_is_certified_and_checks_its_input():
    assert fixed_sequence_test([0.9, 0.5], [30, 60], 100, delta=0.1, epsilon=0.05).threshold is None
    with pytest.raises(ConfigError):
        fixed_sequence_test([0.9], [1], 100, delta=1.5, epsilon=0.05)
    with pytest.raises(ConfigError):
        fixed_sequence_test([], [], 100, delta=0.1, epsilon=0.05)
    with pytest.raises(ConfigError):
        fixed_sequence_test([0.5], [0], 0, delta=0.1, epsilon=0.05)


@pytest.mark.parametrize("name,unit,cands", [
    ("confidence", "sequence", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]),
    ("confidence", "token", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]),
    ("dat", "token", [0.01, 0.03, 0.05, 0.1, 0.3, 1.0])])
def test_calibrate_threshold_on_a_model(name, unit, cands):
    torch.manual_seed(3)
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    batches = [tasks.collate([task.example("valid", 16 * j + i) for i in range(16)], vocab) for j in range(4)]
    model = models.build(small_cfg(max_steps=4), policies.get(name), vocab_size=len(vocab))
    model.train()
    delta, eps = 0.3, 0.1
    result = calibrate_threshold(model, batches, delta=delta, epsilon=eps, candidates=cands, unit=unit)
    assert model.training and model.policy.threshold_override is None  # left as it was
    assert result.threshold is not None
    # recompute the empirical disagreement of the pick by hand
    model.eval()
    differ, total = 0, 0
    with torch.no_grad():
        for batch in batches:
            where = batch.targets != -100
            model.policy.threshold_override = math.inf
            full = model(batch.tokens, batch.mask).logits.argmax(-1)
            model.policy.threshold_override = result.threshold
            early = model(batch.tokens, batch.mask).logits.argmax(-1)
            model.policy.threshold_override = None
            d = (early != full) & where
            differ += int(d.sum()) if unit == "token" else int(d.any(-1).sum())
            total += int(where.sum()) if unit == "token" else int(where.any(-1).sum())
    assert result.n == total and differ / total <= delta
    risk = {lam: r for lam, r, _, _ in result.tested}
    assert risk[result.threshold] == pytest.approx(differ / total)
    assert len(result.tested) > 1  # the test went past the most conservative candidate
    with pytest.raises(ConfigError):
        calibrate_threshold(models.build(small_cfg(), "patience", vocab_size=len(vocab)), batches,
                            delta=0.1, epsilon=0.1, candidates=[0.5])


# -- learning ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,knobs,kind", [("lac", {}, "recurrent"), ("confidence", {}, "recurrent"),
                                             ("confidence", {"measure": "classifier"}, "recurrent"),
                                             ("patience", {}, "recurrent"), ("dat", {}, "stacked")])
def test_training_smoke_lowers_loss_on_list_rank(name, knobs, kind):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = tasks.get("list_rank", m_min=3, m_max=5, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    model = models.build(small_cfg(kind=kind, d_model=32, n_heads=4, d_ff=64, max_steps=4),
                         policies.get(name, **knobs), vocab_size=len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for batch in tasks.stream(task, "train", vocab, batch_size=32, num_batches=200):
        out = model(batch.tokens, batch.mask)
        loss, _ = model.loss(out, batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    # and the exits it learned predict (8 labels: chance is 1/8) at a depth within 1..N
    valid = tasks.collate([task.example("valid", i) for i in range(128)], vocab)
    with torch.no_grad():
        out = model.eval()(valid.tokens, valid.mask)
    _, stats = model.loss(out, valid.targets)
    assert stats["accuracy"] > 0.4 and 1.0 <= stats["steps"] <= 4.0
