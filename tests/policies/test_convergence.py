"""The training-free convergence exits (``ponder.policies.convergence``) against hand-computed
cases and a slow per-token Python loop (plain floats, ``math``)."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
import ponder.tasks as tasks
from ponder.models.config import ModelConfig
from ponder.policies.base import View

FAMILY = ("kl_exit", "minp_kl_exit", "entropy_exit", "argmax_exit", "latent_exit", "cosine_exit",
          "accel_exit", "fixed_point_exit")
B, L, D, N = 2, 6, 3, 7


def test_the_whole_family_is_registered():
    assert set(FAMILY) <= set(policies.names())
    for name in FAMILY:
        cls = policies.policy_class(name)
        assert cls.causal and cls.online and cls.kinds == ("recurrent",)
        assert {"min_steps", "check_every", "train_on"} <= {f.name for f in cls.knob_fields()}


# -- driving a policy on given states (no model, no freezing) ----------------------------------
def drive(policy, hs, training=False, readout=None):
    """hs: list of N+1 tensors [B, L, D] (h^0 … h^N) → (halts after each step, Halting)."""
    n_steps = len(hs) - 1
    mask = torch.ones(hs[0].shape[:2], dtype=torch.bool)
    kw = dict(max_steps=n_steps, active=mask, mask=mask, training=training,
              readout=readout or (lambda h: h))
    memo = policy.start(View(n=0, h=hs[0], prev=None, **kw))
    halts, view = [], None
    for n in range(1, n_steps + 1):
        view = View(n=n, h=hs[n], prev=hs[n - 1], **kw)
        halts.append(policy.step(memo, view).halt.clone())
    return halts, policy.finish(memo, view)


def bound(name, n_steps, **knobs):
    policy = policies.get(name, **knobs)
    policy.bind(d_model=D, max_steps=n_steps)
    return policy


def one_token(rows) -> list[torch.Tensor]:
    """One token (B = L = 1) whose state after step n is ``rows[n]``."""
    return [torch.tensor(r, dtype=torch.float64).view(1, 1, -1) for r in rows]


def exit_step(name, rows, **knobs) -> int:
    hs = one_token(rows)
    _, halting = drive(bound(name, len(rows) - 1, **knobs), hs)
    return int(halting.halt_step)


# -- hand-computed cases ------------------------------------------------------------------------
def test_latent_exit_by_hand():
    # ‖Δ‖/‖h‖ after steps 1, 2, 3, 4: 1/2 = .5, .1/2.1 = .0476, .01/2.11 = .00474, 0
    rows = [[1, 0], [2, 0], [2.1, 0], [2.11, 0], [2.11, 0]]
    assert exit_step("latent_exit", rows) == 2                        # default 0.15
    assert exit_step("latent_exit", rows, threshold=0.03) == 3        # Huginn's
    assert exit_step("latent_exit", rows, threshold=0.05) == 2
    assert exit_step("latent_exit", rows, threshold=0.05, min_steps=3) == 3
    assert exit_step("latent_exit", rows, threshold=0.6) == 1
    # checked at n = 1, 3 only: .5 fails at 1, passes at 3
    assert exit_step("latent_exit", rows, threshold=0.05, check_every=2) == 3
    # checked at n = 2, 4: .0476 ≮ .03 at 2, 0 < .03 at 4
    assert exit_step("latent_exit", rows, threshold=0.03, min_steps=2, check_every=2) == 4
    assert exit_step("latent_exit", rows, threshold=0.0) == 4          # never → N


def test_latent_exit_default_on_a_drifting_state():
    # the un-normalised residual stream of a trained model moves by a constant amount per
    # step: h^n = (1 + n, 0) gives ‖Δ‖/‖h^n‖ = 1/(1 + n) = .5, .333, .25, .2, .167, .143 (n = 6)
    rows = [[1.0 + n, 0.0] for n in range(41)]
    assert exit_step("latent_exit", rows) == 6                        # 1/7 < .15 ≤ 1/6
    # Huginn's 0.03 only once 1/(1 + n) < .03, i.e. n ≥ 33: never within a toy depth N ≤ 32
    assert exit_step("latent_exit", rows, threshold=0.03) == 33
    assert exit_step("latent_exit", rows[:33], threshold=0.03) == 32  # N = 32: forced at N
    assert policies.policy_class("latent_exit").Knobs().threshold == 0.15


def test_cosine_exit_by_hand():
    # 1 − cos: (1,0)→(1,1): 1 − 1/√2 = .2929; (1,1)→(1,1.02): 1 − 2.02/√4.0808 = 4.90e-5;
    # (1,1.02)→(0,1): 1 − 1.02/√2.0404 = .2859
    rows = [[1, 0], [1, 1], [1, 1.02], [0, 1]]
    assert abs(1 - 2.02 / math.sqrt(4.0808) - 4.90e-5) < 1e-7
    assert exit_step("cosine_exit", rows) == 2
    assert exit_step("cosine_exit", rows, threshold=0.3) == 1
    assert exit_step("cosine_exit", rows, threshold=5e-5) == 2
    assert exit_step("cosine_exit", rows, threshold=4e-5) == 3          # never → N


def test_kl_exit_by_hand():
    # identity readout, V = 2. p^1 = (.75, .25) (logits ln 3, 0): KL(uniform ‖ p^1) =
    # .5 ln(.5/.75) + .5 ln(.5/.25) = .143841; p^2 = p^1: KL = 0.
    ln3 = math.log(3.0)
    rows = [[0, 0], [ln3, 0], [ln3, 0], [0, ln3]]
    kl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert abs(kl1 - 0.143841) < 1e-6
    assert exit_step("kl_exit", rows) == 2
    assert exit_step("kl_exit", rows, threshold=0.1439) == 1
    assert exit_step("kl_exit", rows, threshold=0.1438) == 2
    # a uniform first readout equals the uniform start: KL = 0 at step 1
    assert exit_step("kl_exit", [[0, 0], [0, 0], [5, 0]]) == 1


def test_minp_kl_exit_by_hand():
    # V = 3, p = (.9, .05, .05): .05 < .1·.9, so both become 1/3 → (.9, 1/3, 1/3)/1.5667.
    # Changing only the small probabilities (.05 → .02/.08) leaves the filtered p unchanged.
    a = [math.log(0.9), math.log(0.05), math.log(0.05)]
    b = [math.log(0.9), math.log(0.02), math.log(0.08)]
    rows = [[0, 0, 0], a, b, a]
    assert exit_step("minp_kl_exit", rows) == 2
    assert exit_step("kl_exit", rows) == 3            # the unfiltered KL sees the change
    # with min_p = 0 nothing is filtered: the plain KL (.9·0 + .05 ln(.05/.02) + .05 ln(.05/.08))
    kl_ab = 0.05 * math.log(0.05 / 0.02) + 0.05 * math.log(0.05 / 0.08)
    assert exit_step("minp_kl_exit", rows, min_p=0.0, threshold=kl_ab * 1.001) == 2
    assert exit_step("minp_kl_exit", rows, min_p=0.0, threshold=kl_ab * 0.999) == 3


def test_entropy_exit_by_hand():
    # H(.5,.5) = ln 2 = .6931; H(.75,.25) = .5623; the same again: ΔH = 0. Never at step 1.
    ln3 = math.log(3.0)
    rows = [[0, 0], [0, 0], [ln3, 0], [ln3, 0], [0, 0]]
    assert exit_step("entropy_exit", rows) == 3
    assert exit_step("entropy_exit", rows, threshold=0.131) == 2      # |ΔH| at 2 = .1308
    assert exit_step("entropy_exit", rows, threshold=0.130) == 3
    assert exit_step("entropy_exit", rows, threshold=100.0) == 2      # step 1 has no ΔH


def test_argmax_exit_by_hand():
    # argmax per step: 0, 0, 1, 1, 1, 1 → stable counts 0, 1, 0, 1, 2, 3
    up, down = [1, 0], [0, 1]
    rows = [up, up, up, down, down, down, down]
    assert exit_step("argmax_exit", rows, patience=1) == 2
    assert exit_step("argmax_exit", rows, patience=2) == 5
    assert exit_step("argmax_exit", rows, patience=3) == 6
    assert exit_step("argmax_exit", rows) == 6                         # 5 steps never reached → N
    assert exit_step("argmax_exit", rows, patience=1, min_steps=3) == 4


def test_accel_exit_by_hand():
    # h^n = (n, 0): Δ constant → acceleration 0 from n = 2; two hits → exit at 3
    rows = [[n, 0] for n in range(6)]
    assert exit_step("accel_exit", rows) == 3
    assert exit_step("accel_exit", rows, hits=1) == 2
    assert exit_step("accel_exit", rows, hits=3) == 4
    # h = (1,0),(2,0),(4,0),(5,0),(6,0),(7,0): Δ = 1, 2, 1, 1, 1; a_n = |Δn − Δn−1|/‖h^n‖:
    # a2 = 1/4, a3 = 1/5, a4 = 0, a5 = 0 → with threshold .22: hits at 3, 4 → exit at 4
    rows = [[1, 0], [2, 0], [4, 0], [5, 0], [6, 0], [7, 0]]
    assert exit_step("accel_exit", rows, threshold=0.22) == 4
    assert exit_step("accel_exit", rows, threshold=0.26) == 3          # hits at 2 and 3
    assert exit_step("accel_exit", rows, threshold=0.22, hits=1) == 3
    # a broken run of hits restarts: a = .25, .2, 0 with threshold .21 → hits at 3, 4
    assert exit_step("accel_exit", rows, threshold=0.21, hits=2) == 4


def test_fixed_point_exit_by_hand():
    # D = 2, residual ‖Δ‖/√2: Δ = (1,1) → 1; (.01,.01) → .01; (0,0) → 0; (.5, .5) → .5
    rows = [[0, 0], [1, 1], [1.01, 1.01], [1.01, 1.01], [1.51, 1.51], [1.51, 1.51]]
    assert exit_step("fixed_point_exit", rows) == 3                    # 0 < .01 at step 3
    assert exit_step("fixed_point_exit", rows, threshold=0.02) == 2
    assert exit_step("fixed_point_exit", rows, threshold=0.02, window=2) == 3
    assert exit_step("fixed_point_exit", rows, threshold=0.02, window=3) == 5   # 4 breaks the run
    assert exit_step("fixed_point_exit", rows, threshold=0.6, window=5) == 5


# -- the slow reference, random states ------------------------------------------------------------
def lst(x) -> list[float]:
    return [float(v) for v in x]


def l2(x) -> float:
    return math.sqrt(sum(v * v for v in x))


def softmax(z) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def kl_ref(p, q) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def minp_ref(p, ratio) -> list[float]:
    top = max(p)
    f = [1.0 / len(p) if v < ratio * top else v for v in p]
    return [v / sum(f) for v in f]


def reference(name, rows, W, knobs) -> int:
    """Slow per-token loop of the rule: rows = the token's states h^0..h^N as float lists."""
    thr = knobs.get("threshold")
    min_steps, every = knobs.get("min_steps", 1), knobs.get("check_every", 1)
    n_steps = len(rows) - 1
    V = len(W[0])
    readout = [[sum(r[i] * W[i][j] for i in range(len(r))) for j in range(V)] for r in rows]
    prev_p, prev_h, run, prev_pred, prev_delta = [1.0 / V] * V, None, 0, None, None
    for n in range(1, n_steps + 1):
        h, hp = rows[n], rows[n - 1]
        diff = [a - b for a, b in zip(h, hp)]
        p = softmax(readout[n])
        if name == "kl_exit":
            ok = kl_ref(prev_p, p) < thr
            prev_p = p
        elif name == "minp_kl_exit":
            q = minp_ref(p, knobs.get("min_p", 0.1))
            ok = kl_ref(prev_p, q) < thr
            prev_p = q
        elif name == "entropy_exit":
            ent = -sum(v * math.log(v) for v in p if v > 0)
            ok = prev_h is not None and abs(ent - prev_h) < thr
            prev_h = ent
        elif name == "argmax_exit":
            pred = max(range(V), key=lambda j: readout[n][j])
            run = run + 1 if pred == prev_pred else 0
            prev_pred = pred
            ok = run >= knobs.get("patience", 5)
        elif name == "latent_exit":
            ok = l2(diff) / l2(h) < thr
        elif name == "cosine_exit":
            ok = 1 - sum(a * b for a, b in zip(h, hp)) / (l2(h) * l2(hp)) < thr
        elif name == "accel_exit":
            hit = prev_delta is not None and l2([a - b for a, b in zip(diff, prev_delta)]) / l2(h) < thr
            prev_delta = diff
            run = run + 1 if hit else 0
            ok = run >= knobs.get("hits", 2)
        elif name == "fixed_point_exit":
            run = run + 1 if l2(diff) / math.sqrt(len(h)) < thr else 0
            ok = run >= knobs.get("window", 1)
        else:
            raise AssertionError(name)
        if ok and n >= min_steps and (n - min_steps) % every == 0:
            return n
    return n_steps


RANDOM_CASES = {
    "kl_exit": dict(threshold=0.05),
    "minp_kl_exit": dict(threshold=0.05, min_p=0.3),
    "entropy_exit": dict(threshold=0.05),
    "argmax_exit": dict(patience=2),
    "latent_exit": dict(threshold=0.25),
    "cosine_exit": dict(threshold=0.03),
    "accel_exit": dict(threshold=0.3, hits=2),
    "fixed_point_exit": dict(threshold=0.3, window=2),
}


def settling_states(seed: int) -> list[torch.Tensor]:
    """h^0..h^N [B, L, D] float64 that settle at per-token rates (so the exits vary)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, L, D, generator=g, dtype=torch.float64) * 2
    rate = 0.2 + 0.7 * torch.rand(B, L, 1, generator=g, dtype=torch.float64)
    h = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    out = [h]
    for _ in range(N):
        h = target + rate * (h - target) + 0.05 * torch.randn(B, L, D, generator=g, dtype=torch.float64)
        out.append(h)
    return out


@pytest.mark.parametrize("gate", [dict(), dict(min_steps=3), dict(min_steps=2, check_every=3)],
                         ids=["every", "min3", "min2-every3"])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", FAMILY)
def test_matches_a_per_token_loop(name, training, gate):
    knobs = {**RANDOM_CASES[name], **gate}
    hs = settling_states(7)
    W = torch.randn(D, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    halts, halting = drive(bound(name, N, **knobs), hs, training, readout=lambda h: h @ W)
    Wl = [lst(r) for r in W]
    ref = torch.tensor([[reference(name, [lst(h[b, t]) for h in hs], Wl, knobs) for t in range(L)]
                        for b in range(B)])
    assert torch.equal(halting.halt_step, ref)
    if not gate:
        assert len(set(ref.flatten().tolist())) > 1, "a case where every token exits alike"
    for n, halt in enumerate(halts, start=1):  # training: nobody halts; eval: halted ⇔ step ≤ n
        assert torch.equal(halt.bool(), torch.zeros_like(halt) if training else ref <= n)
    assert torch.equal(halting.halt_dist.argmax(-1) + 1, ref)


# -- in the model: eval exits, training objective ---------------------------------------------------
def model_and_batch(name, **knobs):
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    batch = tasks.collate([task.example("train", i) for i in range(6)], vocab)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=5, positions="none")
    return models.build(cfg, policies.get(name, **knobs), vocab_size=len(vocab)), batch


def test_train_on_final_is_the_fixed_depth_objective():
    """``train_on=final``: no per-step readouts in training, the loss is the CE after N steps —
    the same loss and gradients as the ``fixed`` policy with the same weights."""
    model, batch = model_and_batch("latent_exit", train_on="final", threshold=0.5)
    fixed, _ = model_and_batch("fixed")
    fixed.load_state_dict(model.state_dict())
    model.train(), fixed.train()
    out, ref = model(batch.tokens, batch.mask), fixed(batch.tokens, batch.mask)
    assert out.step_logits is None and bool((out.steps[batch.mask] == 5).all())
    loss, _ = model.loss(out, batch.targets)
    ref_loss, _ = fixed.loss(ref, batch.targets)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(out.logits, ref.logits)
    # and in eval the exit applies
    model.eval()
    with torch.no_grad():
        steps = model(batch.tokens, batch.mask).steps[batch.mask]
    assert bool((steps < 5).any())


def test_per_exit_training_collects_every_readout():
    model, batch = model_and_batch("kl_exit")
    model.train()
    out = model(batch.tokens, batch.mask)
    assert out.step_logits is not None and out.step_logits.shape[2] == 5
