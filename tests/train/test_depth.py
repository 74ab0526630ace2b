"""Depth randomisation (``ponder.train.depth``): the sampler's mean and truncation, the model's
loop-count and truncated-backprop knobs against a hand-written loop, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.models.layers import AttnContext
from ponder.train.checkpoint import load_checkpoint
from ponder.train.config import DepthConfig, load_config
from ponder.train.depth import draw_steps, forward_kwargs
from ponder.train.trainer import train
from tests.references import train_killed_at


def draws(depth: DepthConfig, max_steps: int, n: int = 4000, seed: int = 0) -> list[int]:
    return [draw_steps(depth, max_steps=max_steps, seed=seed, step=s) for s in range(n)]


@pytest.mark.parametrize("mean,sigma", [(3.0, 0.5), (8.0, 0.3)])
def test_poisson_lognormal_mean_and_variance(mean, sigma):
    """Untruncated (N large): r − 1 ~ Poisson(τ), τ ~ LogNormal(log r̄ − σ²/2, σ), so
    E[r] = r̄ + 1 and Var[r] = r̄ + r̄²(e^{σ²} − 1)."""
    r = torch.tensor(draws(DepthConfig(sampler="poisson_lognormal", mean=mean, sigma=sigma), 10_000),
                     dtype=torch.float64)
    var = mean + mean ** 2 * (math.exp(sigma ** 2) - 1)
    se = math.sqrt(var / len(r))
    assert abs(r.mean().item() - (mean + 1)) < 4 * se
    assert abs(r.var().item() / var - 1) < 0.15
    assert r.min() >= 1


def test_truncation_to_the_models_depth():
    depth = DepthConfig(sampler="poisson_lognormal", mean=6.0, min_steps=2)
    r = draws(depth, 6)
    assert min(r) == 2 and max(r) == 6 and set(r) == {2, 3, 4, 5, 6}
    # the clamp moves exactly the mass above N onto N
    free = draws(DepthConfig(sampler="poisson_lognormal", mean=6.0, min_steps=2), 10_000)
    assert r.count(6) == sum(1 for x in free if x >= 6)
    assert r.count(2) == sum(1 for x in free if x <= 2)
    # default mean: N / 2
    half = draws(DepthConfig(sampler="poisson_lognormal"), 1000)
    assert abs(sum(half) / len(half) - 501) < 4 * math.sqrt((500 + 500 ** 2 * (math.exp(0.25) - 1)) / 4000)


def test_uniform_sampler_and_determinism():
    r = draws(DepthConfig(sampler="uniform", min_steps=2), 5, n=5000)
    counts = [r.count(k) for k in range(1, 6)]
    assert counts[0] == 0 and all(abs(c - 1250) < 4 * math.sqrt(1250) for c in counts[1:])
    depth = DepthConfig(sampler="poisson_lognormal")
    assert draws(depth, 8, n=50, seed=3) == draws(depth, 8, n=50, seed=3)
    assert draws(depth, 8, n=50, seed=3) != draws(depth, 8, n=50, seed=4)
    assert forward_kwargs(DepthConfig(), max_steps=8, seed=0, step=0) == {}
    assert forward_kwargs(DepthConfig(backprop=2), max_steps=8, seed=0, step=0) == {"steps": 8, "backprop": 2}


@pytest.mark.parametrize("bad", ["depth.sampler=geometric", "depth.sigma=0", "depth.min_steps=9",
                                 "depth.backprop=-1", "depth.mean=-1"])
def test_bad_depth_config_is_refused(bad):
    with pytest.raises(ConfigError, match="depth"):
        load_config(None, ["model.max_steps=8", bad])


# -- the model's knobs ---------------------------------------------------------------------------
def model_and_batch(policy="fixed", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=4, positions="none", execution="dense", **kw)
    model = models.build(cfg, policies.get(policy), vocab_size=11).double()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (3, 7), generator=g)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    return model, tokens, targets


def reference_loss(model, tokens, targets, steps, backprop):
    """Prelude, then ``steps`` applications of the core (the first steps − k without autograd,
    e_n clamped at N), then the readout's cross-entropy: the loop written out."""
    mask = torch.ones_like(tokens, dtype=torch.bool)
    ctx = AttnContext.build(mask, causal=False, rope=None)
    h = model.prelude(model.embed(tokens), ctx)
    for n in range(1, steps + 1):
        with torch.set_grad_enabled(backprop == 0 or n > steps - backprop):
            h = model.core(h + model.step_emb.weight[min(n, model.cfg.max_steps) - 1], ctx)
    logits = model.readout(h, ctx)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@pytest.mark.parametrize("steps,backprop", [(4, 0), (2, 0), (3, 1), (4, 2), (6, 0), (7, 3)])
def test_loop_count_and_truncated_backprop_equal_the_written_out_loop(steps, backprop):
    model, tokens, targets = model_and_batch()
    model.train()
    out = model(tokens, steps=steps, backprop=backprop)
    assert bool((out.steps == steps).all()) and out.halt_dist.shape[-1] == steps
    loss, _ = model.loss(out, targets)
    loss.backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = reference_loss(model, tokens, targets, steps, backprop)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    ref.backward()
    for k, p in model.named_parameters():
        if p.grad is None:
            assert k not in got or not got[k].any(), k
        else:
            torch.testing.assert_close(got[k], p.grad, rtol=1e-9, atol=1e-12, msg=k)
    prelude_grad = sum(float(p.grad.abs().sum()) for p in model.prelude.parameters() if p.grad is not None)
    # truncation cuts the prelude off exactly when some step ran without autograd
    assert (prelude_grad == 0) == (0 < backprop < steps)


def test_depth_knobs_are_refused_where_they_cannot_work():
    model, tokens, _ = model_and_batch("dat")
    with pytest.raises(ConfigError, match="max_steps"):
        model(tokens, steps=3)
    model(tokens, steps=4)  # its own depth is fine
    model, tokens, _ = model_and_batch(kind="stacked")
    with pytest.raises(ConfigError, match="layers"):
        model(tokens, steps=5)
    with pytest.raises(ConfigError, match="at least 1"):
        model(tokens, steps=0)


# -- through the trainer -----------------------------------------------------------------------
TINY = ["task.name=list_rank", "task.knobs.m_min=2", "task.knobs.m_max=4", "task.knobs.ood_m_min=5",
        "task.knobs.ood_m_max=6", "task.knobs.n_labels=8", "model.positions=none",
        "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.max_steps=4",
        "policy.name=fixed", "run.batch_size=8", "run.valid_batches=1", "schedule.warmup=2",
        "run.threads=1", "run.seed=5", "run.steps=8", "run.ckpt_every=2", "run.eval_every=4",
        "run.log_every=1", "depth.sampler=poisson_lognormal", "depth.backprop=2"]


def test_a_run_interrupted_and_resumed_draws_the_same_depths(tmp_path, monkeypatch):
    import json

    reference = tmp_path / "reference"
    train(load_config(None, TINY), reference, progress="none")
    logged = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    loops = [r["stat_loop_steps"] for r in logged if r["split"] == "train"]
    assert loops == [float(draw_steps(load_config(None, TINY).depth, max_steps=4, seed=5, step=s))
                     for s in range(8)]
    assert len(set(loops)) > 1

    killed = tmp_path / "killed"
    train_killed_at(load_config(None, TINY), killed, monkeypatch, call=6)
    assert load_checkpoint(killed).step == 4
    train(load_config(None, TINY), killed, progress="none")
    a, b = load_checkpoint(reference), load_checkpoint(killed)
    assert a.step == b.step == 8
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k


def test_a_policy_bound_to_its_depth_is_refused_before_anything_is_written(tmp_path):
    cfg = load_config(None, [*TINY, "policy.name=anira_e"])
    with pytest.raises(ConfigError, match="random loop counts"):
        train(cfg, tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()
