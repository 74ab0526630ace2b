"""The recurrent / stacked models and the engine: contract, equivalences, freezing, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ponder.models as models
import ponder.policies as policies
import ponder.tasks as tasks
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig, ModelOutput
from ponder.models.engine import EXECUTIONS
from ponder.models.layers import AttnContext, Rotary, apply_rotary
from ponder.policies.scripted import ScriptedPolicy


def list_rank_batch(n: int = 6, seed: int = 0):
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    return tasks.collate([task.example("train", seed + i) for i in range(n)], vocab), len(vocab)


def small_cfg(**kw) -> ModelConfig:
    base = dict(d_model=16, n_heads=2, d_ff=32, prelude=1, core=1, coda=1, max_steps=4,
                positions="none", execution="dense")
    base.update(kw)
    return ModelConfig(**base)


# -- a plain weight-shared Transformer, written out from the model's parameters --------------
def rms(x, w, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def plain_block(block, x, mask, causal):
    """Pre-norm block with explicit softmax attention (no SDPA), x [B, L, D]."""
    B, L, D = x.shape
    a = block.attn
    H, hd = a.n_heads, a.head_dim
    y = rms(x, block.norm1.weight)
    q = (y @ a.q.weight.T + a.q.bias).view(B, L, H, hd).transpose(1, 2)
    kv = y @ a.kv.weight.T + a.kv.bias
    k = kv[..., :D].view(B, L, H, hd).transpose(1, 2)
    v = kv[..., D:].view(B, L, H, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    allowed = mask[:, None, None, :] | torch.eye(L, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
    x = x + att @ a.o.weight.T + a.o.bias
    y = rms(x, block.norm2.weight)
    m = block.ffn
    return x + F.gelu(y @ m.up.weight.T + m.up.bias) @ m.down.weight.T + m.down.bias


def plain_forward(model, tokens, mask, steps):
    cfg = model.cfg
    x = model.embed.tok.weight[tokens]
    for blk in model.prelude.blocks:
        x = plain_block(blk, x, mask, cfg.causal)
    for n in range(steps):
        x = x + model.step_emb.weight[n]
        for blk in model.core.blocks:
            x = plain_block(blk, x, mask, cfg.causal)
    for blk in model.readout.coda.blocks:
        x = plain_block(blk, x, mask, cfg.causal)
    r = model.readout
    return rms(x, r.norm.weight) @ r.head.weight.T + r.head.bias


@pytest.mark.parametrize("causal", [False, True])
def test_fixed_equals_plain_weight_shared_transformer(causal):
    torch.manual_seed(0)
    batch, V = list_rank_batch()
    model = models.build(small_cfg(causal=causal, core=2), policies.get("fixed"), vocab_size=V).eval()
    out = model(batch.tokens, batch.mask)
    ref = plain_forward(model, batch.tokens, batch.mask, model.cfg.max_steps)
    m = batch.mask
    assert torch.allclose(out.logits[m], ref[m], atol=1e-5)
    assert (out.steps[m] == model.cfg.max_steps).all()


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_halting_every_token_at_n_equals_fixed_n(kind, n, execution):
    torch.manual_seed(1)
    batch, V = list_rank_batch()
    big = models.build(small_cfg(kind=kind, max_steps=5, execution=execution), ScriptedPolicy(steps=n),
                       vocab_size=V).eval()
    small = models.build(small_cfg(kind=kind, max_steps=n), policies.get("fixed"), vocab_size=V).eval()
    state = {k: v for k, v in big.state_dict().items()}
    own = small.state_dict()
    for k in own:
        src = state[k]
        own[k] = src[: own[k].shape[0]] if k.startswith("step_emb") else src
    small.load_state_dict(own)
    a, b = big(batch.tokens, batch.mask), small(batch.tokens, batch.mask)
    m = batch.mask
    assert torch.allclose(a.logits[m], b.logits[m], atol=1e-5)
    assert (a.steps[m] == n).all() and (b.steps[m] == n).all()
    # fixed(steps=n) on the big model is the same computation again
    fixed_n = models.build(small_cfg(kind=kind, max_steps=5), policies.get("fixed", steps=n), vocab_size=V).eval()
    fixed_n.load_state_dict(big.state_dict())
    assert torch.allclose(fixed_n(batch.tokens, batch.mask).logits[m], a.logits[m], atol=1e-6)


def test_act_halting_at_step_one_equals_fixed_one():
    torch.manual_seed(2)
    batch, V = list_rank_batch()
    act = models.build(small_cfg(max_steps=4), policies.get("act", halt_bias=50.0), vocab_size=V).eval()
    one = models.build(small_cfg(max_steps=4), policies.get("fixed", steps=1), vocab_size=V).eval()
    one.load_state_dict({k: v for k, v in act.state_dict().items() if not k.startswith("policy.")})
    m = batch.mask
    a = act(batch.tokens, batch.mask)
    assert (a.steps[m] == 1).all()
    assert torch.allclose(a.logits[m], one(batch.tokens, batch.mask).logits[m], atol=1e-5)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_frozen_tokens_are_copied_unchanged_and_get_no_gradient_from_later_steps(execution):
    torch.manual_seed(3)
    batch, V = list_rank_batch(4)
    plan = torch.full(batch.tokens.shape, 4, dtype=torch.long)
    plan[:, 1] = 1   # token 1 of every sequence halts after step 1
    policy = ScriptedPolicy(steps=plan)
    model = models.build(small_cfg(coda=0, max_steps=4, execution=execution), policy, vocab_size=V).train()
    views = []
    original = policy.step

    def spy(memo, view):
        view.h.retain_grad()
        views.append(view)
        return original(memo, view)

    policy.step = spy
    out = model(batch.tokens, batch.mask)
    m = batch.mask
    assert (out.steps[:, 1] == 1).all() and (out.steps[m][:, None] >= 1).all()
    # the frozen token shows the same state at every later step
    for view in views[1:]:
        assert torch.equal(view.h[:, 1], views[0].h[:, 1])
    # loss on every token except the frozen one: no gradient reaches its state after step 1
    keep = m.clone()
    keep[:, 1] = False
    out.logits[keep].sum().backward()
    assert views[0].h.grad[:, 1].abs().max() == 0
    # ... while a token that was running at step 1 does pass gradient on (sanity of the test)
    assert views[0].h.grad[:, 2][m[:, 2]].abs().max() > 0


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_frozen_state_is_visible_to_running_tokens(execution):
    """State copying, against a hand-written loop: a frozen row keeps its exit state and
    running tokens keep attending to it."""
    torch.manual_seed(4)
    batch, V = list_rank_batch(3)
    plan = torch.randint(1, 4, batch.tokens.shape)
    model = models.build(small_cfg(coda=0, max_steps=3, execution=execution), ScriptedPolicy(steps=plan),
                         vocab_size=V).eval()
    out = model(batch.tokens, batch.mask)
    m = batch.mask
    x = model.embed.tok.weight[batch.tokens]
    for blk in model.prelude.blocks:
        x = plain_block(blk, x, m, False)
    for n in range(1, 4):
        act = (m & (plan >= n))[..., None]
        xin = torch.where(act, x + model.step_emb.weight[n - 1], x)
        x = torch.where(act, plain_block(model.core.blocks[0], xin, m, False), x)
    r = model.readout
    ref = rms(x, r.norm.weight) @ r.head.weight.T + r.head.bias
    assert torch.allclose(out.logits[m], ref[m], atol=1e-5)
    assert torch.equal(out.steps[m], plan[m])
    # and it is not the same as letting every token run (the freezing matters)
    full = plain_forward(model, batch.tokens, m, 3)
    assert not torch.allclose(out.logits[m], full[m], atol=1e-3)


def test_pads_do_not_change_real_tokens():
    torch.manual_seed(5)
    batch, V = list_rank_batch(3)
    for name in ("fixed", "pondernet", "act"):
        model = models.build(small_cfg(positions="learned"), policies.get(name), vocab_size=V).eval()
        out = model(batch.tokens, batch.mask)
        L = batch.tokens.shape[1]
        tokens = torch.cat([batch.tokens, torch.zeros(3, 3, dtype=torch.long)], 1)
        mask = torch.cat([batch.mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
        padded = model(tokens, mask)
        m = batch.mask
        assert torch.allclose(out.logits[m], padded.logits[:, :L][m], atol=1e-5), name
        assert torch.equal(out.steps[m], padded.steps[:, :L][m]), name
        assert (padded.steps[~mask] == 0).all()


@pytest.mark.parametrize("positions", ["learned", "rotary", "none"])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_positions_and_norms_forward_backward(positions, norm):
    torch.manual_seed(6)
    batch, V = list_rank_batch()
    model = models.build(small_cfg(positions=positions, norm=norm), "pondernet", vocab_size=V)
    out = model(batch.tokens, batch.mask)
    loss, stats = model.loss(out, batch.targets)
    loss.backward()
    assert math.isfinite(loss.item()) and stats["loss"] == pytest.approx(loss.item())


def test_positions_matter_only_when_present():
    torch.manual_seed(7)
    batch, V = list_rank_batch(2)
    perm = torch.tensor([0, 2, 1] + list(range(3, batch.tokens.shape[1])))
    for positions, invariant in (("none", True), ("learned", False), ("rotary", False)):
        model = models.build(small_cfg(positions=positions), "fixed", vocab_size=V).eval()
        tok, mask = batch.tokens[:, perm], batch.mask[:, perm]
        a = model(batch.tokens, batch.mask).logits[:, perm]
        b = model(tok, mask).logits
        assert torch.allclose(a, b, atol=1e-5) == invariant, positions


def test_rotary_scores_depend_on_relative_position_only():
    rot = Rotary(head_dim=8)
    cos, sin = rot.tables(12, torch.device("cpu"))
    q, k = torch.randn(8), torch.randn(8)
    def score(i, j):
        qi = apply_rotary(q.view(1, 1, 1, 8).expand(1, 1, 12, 8), cos, sin)[0, 0, i]
        kj = apply_rotary(k.view(1, 1, 1, 8).expand(1, 1, 12, 8), cos, sin)[0, 0, j]
        return float(qi @ kj)
    assert score(5, 3) == pytest.approx(score(9, 7), abs=1e-5)
    assert score(5, 3) != pytest.approx(score(5, 4), abs=1e-3)


def test_attention_context_masks():
    mask = torch.tensor([[True, True, False]])
    ctx = AttnContext.build(mask, causal=True)
    allowed = ctx.attn_mask[0, 0]
    assert allowed.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    ctx = AttnContext.build(mask, causal=False)
    assert ctx.attn_mask[0, 0].tolist() == [[True, True, False], [True, True, False], [True, True, True]]


def test_default_init_is_pytorchs():
    """N(0, 0.02) got list_rank stuck; the model keeps PyTorch's default initialisation."""
    torch.manual_seed(8)
    model = models.build(small_cfg(), "fixed", vocab_size=10)
    assert model.embed.tok.weight.std() > 0.5          # nn.Embedding default is N(0, 1)
    w = model.core.blocks[0].ffn.up.weight
    bound = 1 / math.sqrt(w.shape[1])                  # nn.Linear default: U(-1/√fan_in, ..)
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound


def test_registry_and_build_errors():
    assert {"recurrent", "stacked"} <= set(models.names())
    with pytest.raises(ConfigError):
        models.build(small_cfg(kind="nope"), "fixed", vocab_size=10)
    with pytest.raises(ConfigError):
        models.build(small_cfg(d_model=15), "fixed", vocab_size=10)
    with pytest.raises(ConfigError):
        models.build(small_cfg(positions="sinusoid"), "fixed", vocab_size=10)
    with pytest.raises(ConfigError):
        models.build(small_cfg(norm="batchnorm"), "fixed", vocab_size=10)
    with pytest.raises(ConfigError):
        models.build(small_cfg(execution="warp"), "fixed", vocab_size=10)
    with pytest.raises(ConfigError):
        models.build(small_cfg(max_steps=0), "fixed", vocab_size=10)
    with pytest.raises(ConfigError):
        models.build(small_cfg(max_steps=2), policies.get("fixed", steps=3), vocab_size=10)
    with pytest.raises(ConfigError):
        models.build(small_cfg(), "no_such_policy", vocab_size=10)
    policy = policies.get("pondernet")
    models.build(small_cfg(), policy, vocab_size=10)
    with pytest.raises(ConfigError):  # a policy belongs to one model
        models.build(small_cfg(), policy, vocab_size=10)


def test_register_model_hook():
    calls = []

    def builder(cfg, policy, *, vocab_size):
        calls.append((cfg.kind, policy.name, vocab_size))
        return torch.nn.Linear(1, 1)

    models.register_model("test_kind", builder)
    try:
        models.build(small_cfg(kind="test_kind"), "fixed", vocab_size=7)
    finally:
        models._REGISTRY.pop("test_kind")
    assert calls == [("test_kind", "fixed", 7)]


def test_output_contract_and_stats():
    torch.manual_seed(9)
    batch, V = list_rank_batch()
    model = models.build(small_cfg(), "pondernet", vocab_size=V)
    out = model(batch.tokens, batch.mask)
    assert isinstance(out, ModelOutput)
    B, L = batch.tokens.shape
    N = model.cfg.max_steps
    assert out.logits.shape == (B, L, V) and out.steps.shape == (B, L)
    assert out.halt_dist.shape == (B, L, N) and out.step_logits.shape == (B, L, N, V)
    loss, stats = model.loss(out, batch.targets)
    assert loss.dim() == 0
    assert all(isinstance(v, float) for v in stats.values())
    for key in ("loss", "task_loss", "aux_loss", "steps", "accuracy", "expected_steps"):
        assert key in stats
    assert stats["loss"] == pytest.approx(stats["task_loss"] + stats["aux_loss"], rel=1e-5)
    # training: every token runs N steps, the prediction is the readout at the inference step
    assert (out.steps[batch.mask] == N).all()
    idx = (out.halt_step - 1)[..., None, None].expand(-1, -1, 1, V)
    assert torch.equal(out.logits, out.step_logits.gather(2, idx).squeeze(2))
    # eval: tokens freeze at the inference step, no per-step readouts
    model.eval()
    ev = model(batch.tokens, batch.mask)
    assert ev.step_logits is None
    assert torch.equal(ev.steps[batch.mask], ev.halt_step[batch.mask])
