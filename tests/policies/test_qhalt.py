"""Q-learning halting (q_halt per token, q_halt_sample per example) against hand-made cases
and a slow per-unit loop."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
import ponder.tasks as tasks
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.policies.base import View

N = 5


def drive(policy, hs, mask, training):
    kw = dict(max_steps=len(hs) - 1, active=mask, mask=mask, training=training, readout=lambda h: h)
    memo = policy.start(View(n=0, h=hs[0], prev=None, **kw))
    view = None
    for n in range(1, len(hs)):
        view = View(n=n, h=hs[n], prev=hs[n - 1], **kw)
        policy.step(memo, view)
    return policy.finish(memo, view)


def identity_head(name, n_steps, **knobs):
    """q_halt = s[0], q_cont = s[1] of the RMS-normalised state (order-preserving)."""
    policy = policies.get(name, **knobs)
    policy.bind(d_model=2, max_steps=n_steps)
    with torch.no_grad():
        policy.q_head.weight.copy_(torch.eye(2))
        policy.q_head.bias.zero_()
    return policy.double()


def test_halting_rule_by_hand():
    # token 0: q_halt > q_cont from step 2; token 1: never; token 2: at step 1
    rows = {0: [(0, 1), (2, 1), (2, 1), (0, 1)], 1: [(0, 1)] * 4, 2: [(1, 0)] * 4}
    hs = [torch.zeros(1, 3, 2, dtype=torch.float64)]
    for n in range(4):
        hs.append(torch.tensor([[rows[t][n] for t in range(3)]], dtype=torch.float64))
    mask = torch.ones(1, 3, dtype=torch.bool)
    halting = drive(identity_head("q_halt", 4), hs, mask, training=False)
    assert halting.halt_step.tolist() == [[2, 4, 1]]
    # TRM's rule: q_halt > 0 (token 0 at 2, token 1 never — its q_halt is 0 — token 2 at 1)
    halting = drive(identity_head("q_halt", 4, continue_target=False), hs, mask, training=False)
    assert halting.halt_step.tolist() == [[2, 4, 1]]
    hs[1][0, 1] = torch.tensor([0.5, 1.0])      # q_halt > 0 but < q_cont
    assert drive(identity_head("q_halt", 4, continue_target=False), hs, mask, False).halt_step[0, 1] == 1
    assert drive(identity_head("q_halt", 4), hs, mask, False).halt_step[0, 1] == 4
    # the published evaluation: no halting at all
    assert drive(identity_head("q_halt", 4, eval_halting=False), hs, mask, False).halt_step.tolist() == [[4, 4, 4]]


def test_per_sample_decides_once_per_example():
    # example 0: position 0 wants to halt at step 1, position 1 never: with pool=first the whole
    # example halts at 1; with pool=mean (1,0)+(0,1) → (.5,.5): a tie, never
    hs = [torch.zeros(1, 2, 2, dtype=torch.float64)] + [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]],
                                                                      dtype=torch.float64)] * 3
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert drive(identity_head("q_halt_sample", 3), hs, mask, False).halt_step.tolist() == [[1, 1]]
    assert drive(identity_head("q_halt_sample", 3, pool="mean"), hs, mask, False).halt_step.tolist() == [[3, 3]]
    assert drive(identity_head("q_halt", 3), hs, mask, False).halt_step.tolist() == [[1, 3]]


def test_exploration_draws_a_uniform_minimum_step():
    """explore = 1 and a head that always wants to halt: the greedy halt step is 1, the
    explored segment count is the drawn minimum, uniform on min_explore..N."""
    torch.manual_seed(0)
    n_steps, B, L = 6, 400, 3
    policy = policies.get("q_halt_sample", explore=1.0, min_explore=2, halt_bias=50.0)
    policy.bind(d_model=4, max_steps=n_steps)
    hs = [torch.randn(B, L, 4) for _ in range(n_steps + 1)]
    mask = torch.ones(B, L, dtype=torch.bool)
    halting = drive(policy, hs, mask, training=True)
    seg = halting.carry["segments"]
    assert bool((halting.halt_step == 1).all())
    assert bool((seg == seg[:, :1]).all())                   # one draw per example
    counts = torch.bincount(seg[:, 0], minlength=n_steps + 1).tolist()
    assert counts[0] == counts[1] == 0 and sum(counts) == B
    for c in counts[2:]:                                     # 5 values, 80 expected each
        assert abs(c - B / 5) < 4 * math.sqrt(B / 5)
    # explore = 0: the segments are the greedy halting steps
    policy = policies.get("q_halt", explore=0.0, halt_bias=50.0)
    policy.bind(d_model=4, max_steps=n_steps)
    halting = drive(policy, hs, mask, training=True)
    assert torch.equal(halting.carry["segments"], halting.halt_step)


def setup(name, **knobs):
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    batch = tasks.collate([task.example("train", i) for i in range(6)], vocab)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=N, positions="none")
    model = models.build(cfg, policies.get(name, **knobs), vocab_size=len(vocab)).double()
    with torch.no_grad():  # a head that halts at varied steps
        model.policy.q_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(2))
        model.policy.q_head.bias.zero_()
    return model, batch


def bce(z: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 / (1 + math.exp(z))))


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize("name", ["q_halt", "q_halt_sample"])
@pytest.mark.parametrize("continue_target", [True, False])
@pytest.mark.parametrize("explore", [0.0, 0.5])
def test_loss_matches_a_per_unit_loop(name, continue_target, explore):
    model, batch = setup(name, continue_target=continue_target, explore=explore, q_weight=0.3)
    model.train()
    out = model(batch.tokens, batch.mask)
    loss, stats = model.loss(out, batch.targets)
    carry = out.extras["policy_carry"]
    seg, q = carry["segments"], carry["q"].detach()
    sl = out.step_logits.detach()
    B, L = batch.tokens.shape
    if explore == 0.0:
        assert torch.equal(seg, out.halt_step)
    assert len(set(seg[batch.mask].tolist())) > 1, "a case where every unit runs alike"
    tgt = batch.targets
    # the task part: CE of every step a scored token ran, each weighing 1
    ce = count = 0.0
    for b in range(B):
        for t in range(L):
            y = int(tgt[b, t])
            if y < 0:
                continue
            for n in range(int(seg[b, t])):
                row = [float(v) for v in sl[b, t, n]]
                m = max(row)
                ce += -(row[y] - m - math.log(sum(math.exp(v - m) for v in row)))
                count += 1
    task = ce / count
    # the units: tokens, or examples (position 0 carries the example's q)
    units = []
    for b in range(B):
        scored = [t for t in range(L) if int(tgt[b, t]) >= 0]
        right = [[int(sl[b, t, n].argmax()) == int(tgt[b, t]) for n in range(N)] for t in range(L)]
        if name == "q_halt":
            units += [(q[b, t], [float(right[t][n]) for n in range(N)], int(seg[b, t])) for t in scored]
        elif scored:
            units.append((q[b, 0], [float(all(right[t][n] for t in scored)) for n in range(N)], int(seg[b, 0])))
    halt_terms, cont_terms = [], []
    for qu, labels, h in units:
        for n in range(h):                       # n is 0-based: steps 1..h
            halt_terms.append(bce(float(qu[n, 0]), labels[n]))
            if continue_target and n < N - 1:
                nxt = qu[n + 1]
                v = float(nxt[0]) if n + 1 == N - 1 else max(float(nxt[0]), float(nxt[1]))
                cont_terms.append(bce(float(qu[n, 1]), sig(v)))
    q_loss = sum(halt_terms) / len(halt_terms)
    if continue_target:
        q_loss += sum(cont_terms) / len(cont_terms)
    expected = task + 0.3 * q_loss
    assert abs(loss.item() - expected) < 1e-9 * max(1.0, expected)
    assert abs(stats["prediction_loss"] - task) < 1e-9


def test_gradients_reach_the_q_head_and_the_backbone():
    model, batch = setup("q_halt")
    model.train()
    loss, _ = model.loss(model(batch.tokens, batch.mask), batch.targets)
    loss.backward()
    assert model.policy.q_head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.core.parameters())


def test_min_explore_beyond_max_steps_is_refused():
    with pytest.raises(ConfigError, match="min_explore"):
        models.build(ModelConfig(max_steps=3, positions="none"), policies.get("q_halt", min_explore=4),
                     vocab_size=9)


def test_eval_halting_off_runs_every_step():
    model, batch = setup("q_halt_sample", eval_halting=False)
    model.eval()
    with torch.no_grad():
        out = model(batch.tokens, batch.mask)
    assert bool((out.steps[batch.mask] == N).all())
    model, _ = setup("q_halt_sample")
    model.eval()
    with torch.no_grad():
        out = model(batch.tokens, batch.mask)
    steps = out.steps.masked_fill(~batch.mask, -1)
    for b in range(steps.shape[0]):  # every real token of an example stops at the same step
        real = steps[b][batch.mask[b]]
        assert bool((real == real[0]).all())
