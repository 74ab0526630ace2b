"""The Neural Data Router's pieces as block kinds: the ``geometric`` attention kind and the
``copy_gate`` residual, each against a slow loop over tokens, keys and heads (forward and
gradients, float64, pads, causal); dense and compacted execution agree with them (MoD's
routed keys and MoR's active keys included); the ``ndr.yaml`` preset trains."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import ponder.models as models
from ponder.errors import ConfigError
from ponder.models.config import KindConfig, ModelConfig, RouterConfig
from ponder.models.layers import COPY_GATE_BIAS, AttnContext
from ponder.policies.scripted import ScriptedPolicy
from tests.batches import assert_compact_equals_dense, assert_same_gradients, padded_batch
from tests.references import slow_block

V, N = 11, 4
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def model_for(*, attention="geometric", residual="copy_gate", router="none", causal=False,
              execution="dense", normalize=False, policy=None, kind="recurrent", positions="rotary"):
    g = torch.Generator().manual_seed(3)
    steps = torch.randint(1, N + 1, (4, 9), generator=g)
    knobs = {"normalize": normalize} if attention == "geometric" else {}
    cfg = ModelConfig(kind=kind, d_model=16, n_heads=2, d_ff=32, prelude=1, core=2, coda=1,
                      max_steps=N, causal=causal, positions=positions, execution=execution,
                      attention=KindConfig(kind=attention, knobs=knobs), residual=residual,
                      router=RouterConfig(kind=router, every=2))
    torch.manual_seed(0)
    model = models.build(cfg, policy if policy is not None else ScriptedPolicy(steps=steps), vocab_size=V)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.bias"):   # gates half open: both terms of the mix matter
                p.normal_(0.0, 1.0, generator=g)
            if name.endswith("attn.beta.weight"):   # direction biases that differ by query
                p.normal_(0.0, 1.0, generator=g)
    return model


# -- one block against the slow loop ----------------------------------------------------------
@pytest.mark.parametrize("residual,causal,normalize", [("copy_gate", False, False), ("copy_gate", True, True),
                                                      ("add", False, True), ("add", True, False)])
def test_block_equals_slow_loop_with_gradients(residual, causal, normalize):
    model = model_for(residual=residual, causal=causal, normalize=normalize, positions="none").double()
    block = model.core.blocks[0]
    assert block.attn.weights == "geometric" and (block.gate is not None) == (residual == "copy_gate")
    g = torch.Generator().manual_seed(4)
    B, L, D = 3, 7, 16
    x = (torch.randn(B, L, D, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    ctx = AttnContext.build(mask, causal=causal)
    fast = block(x, ctx)
    ref = slow_block(block, x, mask, mask, torch.ones(B, L, dtype=torch.float64), causal=causal,
                     routed_keys=False)
    torch.testing.assert_close(fast[mask], ref[mask], atol=1e-10, rtol=1e-10)
    w = torch.randn(B, L, D, generator=g, dtype=torch.float64) * mask[..., None]
    grads = assert_same_gradients((fast * w).sum(), (ref * w).sum(), block, x)
    assert grads["attn.beta.weight"].abs().sum() > 0       # the direction biases are trained
    if residual == "copy_gate":
        assert grads["gate.weight"].abs().sum() > 0


def test_direction_biases_steer_the_match():
    """Known answer: with q·k = 0, a large β_front and a very negative β_back, each query
    takes its right-hand neighbour (σ ≈ 1 there blocks everything farther); the last query,
    with nothing to its right, takes nothing from the left."""
    model = model_for(residual="add", positions="none").double()
    attn = model.core.blocks[0].attn
    B, L, H, hd = 1, 5, attn.n_heads, attn.head_dim
    q = torch.zeros(B, H, L, hd + 2, dtype=torch.float64)
    q[..., hd] = -50.0       # β_back
    q[..., hd + 1] = 50.0    # β_front
    k = torch.randn(B, H, L, hd, dtype=torch.float64)
    v = torch.arange(L, dtype=torch.float64).view(1, 1, L, 1).expand(B, H, L, hd)
    out = attn.attend_grid(q * torch.tensor([0.0] * hd + [1.0, 1.0], dtype=torch.float64), k, v, None, 0.0)
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0], dtype=torch.float64))


def test_closed_copy_gate_copies_the_block_input():
    model = model_for(residual="copy_gate")
    block = model.core.blocks[0]
    assert torch.all(model_for().prelude.blocks[0].gate.bias.detach() != 0)
    fresh = models.build(dataclasses.replace(model.cfg), ScriptedPolicy(steps=2), vocab_size=V)
    assert torch.all(fresh.core.blocks[0].gate.bias == COPY_GATE_BIAS)   # NDR's init: copy
    with torch.no_grad():
        block.gate.bias.fill_(-1e4)
    x = torch.randn(2, 6, 16)
    ctx = AttnContext.build(torch.ones(2, 6, dtype=torch.bool), causal=False)
    torch.testing.assert_close(block(x, ctx), x, atol=0.0, rtol=0.0)


# -- whole models: dense (the reference) and compacted agree ---------------------------------
CASES = [("geometric", "copy_gate", "none", "scripted"), ("geometric", "add", "none", "scripted"),
         ("standard", "copy_gate", "none", "scripted"), ("geometric", "copy_gate", "mod", "scripted"),
         ("geometric", "copy_gate", "skip", "scripted"), ("geometric", "copy_gate", "none", "mor_expert")]


def _runnable(case: tuple[str, ...], causal: bool) -> bool:
    """MoD's top-k over the sequence and a non-causal policy exist only in non-causal models."""
    from ponder.policies import get as get_policy

    router, policy = case[2], case[3]
    return not causal or (router != "mod" and (policy == "scripted" or type(get_policy(policy)).causal))


MODEL_CASES = [(*c, causal) for causal in (False, True) for c in CASES if _runnable(c, causal)]


@pytest.mark.parametrize("attention,residual,router,policy,causal", MODEL_CASES,
                         ids=["-".join(c[:4]) + ("-causal" if c[4] else "") for c in MODEL_CASES])
def test_compact_equals_dense(attention, residual, router, policy, causal):
    from ponder.policies import get as get_policy

    pol = None if policy == "scripted" else get_policy(policy)
    dense = model_for(attention=attention, residual=residual, router=router, causal=causal, policy=pol)
    assert_compact_equals_dense(dense, *padded_batch(vocab=V, seed=2))


def test_flops_count_the_gate_and_the_direction_biases():
    plain = model_for(attention="standard", residual="add").eval()
    ndr = model_for(attention="geometric", residual="copy_gate").eval()
    block = ndr.core.blocks[0]
    d, H = 16, 2
    n_keys = 7.0
    extra = block.flops_per_token(n_keys) - plain.core.blocks[0].flops_per_token(n_keys)
    # gate 2·d·d, biases 2·d·2H, the scan's 8 operations per (head, key)
    assert math.isclose(extra, 2.0 * d * d + 4.0 * d * H + 8.0 * H * n_keys)


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="residual"):
        models.build(ModelConfig(d_model=16, n_heads=2, residual="gated"), ScriptedPolicy(steps=2), vocab_size=V)
    with pytest.raises(ConfigError, match="normalize"):
        models.build(ModelConfig(d_model=16, n_heads=2,
                                 attention=KindConfig(kind="geometric", knobs={"normalize": 3})),
                     ScriptedPolicy(steps=2), vocab_size=V)
    cfg = ModelConfig(kind="adatape", d_model=16, n_heads=2, residual="copy_gate")
    with pytest.raises(ConfigError, match="residual"):
        models.build(cfg, "fixed", vocab_size=V)


def test_cached_decoding_refuses_geometric_attention():
    from ponder.generate.decode import check_decodable

    model = model_for(causal=True).eval()
    with pytest.raises(ConfigError, match="softmax"):
        check_decodable(model)


# -- the preset -------------------------------------------------------------------------------
def test_ndr_preset_trains_a_few_steps(tmp_path):
    from ponder.train.config import load_config
    from ponder.train.trainer import train

    few = ["run.steps=3", "run.batch_size=8", "run.valid_batches=1", "run.eval_every=3",
           "run.ckpt_every=3", "run.log_every=1", "schedule.warmup=1", "schedule.total=3",
           "run.threads=1", "model.max_steps=4"]
    cfg = load_config(CONFIGS / "ndr.yaml", few)
    assert cfg.model.attention.kind == "geometric" and cfg.model.residual == "copy_gate"
    assert cfg.model.prelude == 0 and cfg.model.coda == 0 and cfg.model.core == 1
    assert cfg.task.name == "table_lookup"
    train(cfg, tmp_path / "ndr", progress="none")
    rows = [json.loads(line) for line in (tmp_path / "ndr" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
