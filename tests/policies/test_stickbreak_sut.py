"""stick-breaking against a float64 transcription of the Sparse Universal Transformer's loop.

The oracle is shawntan/SUT, ``halting.py`` (``ACTWrapper.forward``) driven as
``transformer_encoder.py`` drives it, written out with the model's own weights and an
explicit attention: the layer's queries and residual come from the token's stream ``x``, its
keys/values from ``self_attn_input`` (the soft-halted mix, ``x`` at the first layer); the gate
(Linear → GELU → Linear(2, no bias)) reads the stream; a token whose P(never halt) drops
below 1 − threshold keeps showing its last mix; the encoder's output is the mix.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ponder.models as models
import ponder.policies as policies
from ponder.models.config import ModelConfig
from ponder.models.layers import AttnContext
from ponder.policies.base import Decision
from ponder.policies.stickbreak import StickBreak
from tests.batches import padded_batch

V, N, B, L = 11, 6, 4, 9


def batch():
    return padded_batch(vocab=V, B=B, L=L, short=4)


def model_for(*, causal=False, step_embedding=False, kind="recurrent", stop=0.9):
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, d_model=16, n_heads=2, d_ff=32, prelude=1, core=1, coda=1,
                      max_steps=N, causal=causal, positions="none", execution="dense",
                      step_embedding=step_embedding)
    model = models.build(cfg, policies.get("stickbreak", tau=0.1, stop=stop, halt_bias=-1.0),
                         vocab_size=V)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking gate (SUT's starts at zero: every α = ½)
        model.policy.gate[-1].weight.copy_(0.5 * torch.randn(2, 16, generator=g))
    return model.double()


def layer(block, x, kv, ctx):
    """One pre-norm block, written out: queries/residual from x, keys/values from kv."""
    attn = block.attn
    H, hd = attn.n_heads, attn.head_dim
    q = attn.q(block.norm1(x)).view(B, L, H, hd).transpose(1, 2)
    k, v = attn.kv(block.norm1(kv)).chunk(2, -1)
    k, v = k.reshape(B, L, H, hd).transpose(1, 2), v.reshape(B, L, H, hd).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(~ctx.attn_mask, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, H * hd)
    h = x + attn.o(y)
    return h + block.ffn(block.norm2(h))


def sut_reference(model, tokens, mask, threshold, detach_frozen=True):
    """→ (logits [B, L, V], p per gated layer [B, L, N−1], layers each token ran [B, L]).

    ``detach_frozen``: a halted token's mix enters later layers without gradient (ponder's
    engine convention for every frozen state; SUT keeps that graph). Forward values are SUT's
    either way. The step embedding, when the model has one, is added to the running tokens'
    stream and mix before each layer (ponder's convention; SUT has none)."""
    ctx = AttnContext.build(mask, causal=model.cfg.causal)
    gate, offset = model.policy.gate, model.policy.offset
    pad = mask.to(torch.float64)
    x = model.prelude(model.embed(tokens), ctx)
    soft = None
    log_never_halt = torch.zeros(B, L, dtype=torch.float64)
    acc_h = torch.zeros_like(x)
    ps = []
    halted_at = torch.full((B, L), N)
    for i in range(N):
        if i == 0:
            p_never_halt = pad
        else:
            log_g = F.log_softmax(gate(x) + offset, -1)
            log_halt = log_never_halt[..., None] + log_g
            log_never_halt = log_halt[..., 0]
            p = torch.exp(log_halt[..., 1])
            acc_h = acc_h + p[..., None] * x
            ps.append(p)
            p_never_halt = torch.exp(log_never_halt)
            p_never_halt = p_never_halt.masked_fill(p_never_halt < 1 - threshold, 0) * pad
            newly = (p_never_halt < 1 - threshold) & mask & (halted_at == N)
            halted_at = torch.where(newly, i, halted_at)
        if soft is None:
            kv = x
        else:  # a token halting now shows its last mix from this layer on (ponder: detached)
            frozen = p_never_halt[..., None] < 1 - threshold
            kv = torch.where(frozen, soft.detach(), soft) if detach_frozen else soft
        e = model.step_vector(i + 1)
        if e is not None:
            running = (p_never_halt > 0)[..., None] if i else mask[..., None]
            x_in, kv = x + e, torch.where(running, kv + e, kv)
        else:
            x_in = x
        curr = layer(model.core_group(i + 1).blocks[0], x_in, kv, ctx)
        if soft is None:
            soft = out = curr
        else:
            mix = acc_h + p_never_halt[..., None] * curr
            out = torch.where(frozen, out, mix)   # what the token's own readout reads
            soft = torch.where(frozen, soft, mix)
        x = curr
    return model.readout(out, ctx), torch.stack(ps, -1), halted_at


@pytest.mark.parametrize("kind,causal,step_embedding", [("recurrent", False, False),
                                                        ("recurrent", True, False),
                                                        ("recurrent", False, True),
                                                        ("stacked", False, False)])
@pytest.mark.parametrize("execution", ["dense", "compact"])
def test_stickbreak_matches_the_sut_loop(kind, causal, step_embedding, execution):
    model = model_for(kind=kind, causal=causal, step_embedding=step_embedding)
    model.cfg = type(model.cfg)(**{**model.cfg.__dict__, "execution": execution})
    model.eval()
    tokens, mask, _ = batch()
    stop = model.policy.knobs.stop
    with torch.no_grad():
        out = model(tokens, mask)
        ref_logits, ps, halted_at = sut_reference(model, tokens, mask, stop)
    torch.testing.assert_close(out.logits[mask], ref_logits[mask], atol=1e-10, rtol=1e-10)
    assert torch.equal(out.halt_step[mask], halted_at[mask])
    assert torch.equal(out.steps[mask], halted_at[mask])
    assert len(torch.unique(halted_at[mask])) >= 3  # halting at several depths
    # p(n) is SUT's for the steps before the stop; the stop step takes the remaining mass
    for b in range(B):
        for t in range(L):
            if not mask[b, t]:
                continue
            n = int(halted_at[b, t])
            sut = ps[b, t, :n].tolist() if n < N else ps[b, t].tolist() + [0.0]
            sut[n - 1] += 1 - sum(sut[:n])
            assert out.halt_dist[b, t, :n].tolist() == pytest.approx(sut[:n], abs=1e-12)
            assert float(out.halt_dist[b, t, n:].abs().sum()) == 0.0


def test_stickbreak_training_gradients_match_the_sut_loop():
    model = model_for().train()
    tokens, mask, targets = batch()
    out = model(tokens, mask)
    loss, _ = model.loss(out, targets)
    ref_logits, _, _ = sut_reference(model, tokens, mask, model.policy.knobs.stop)
    torch.testing.assert_close(out.logits[mask], ref_logits[mask], atol=1e-10, rtol=1e-10)
    ref = F.cross_entropy(ref_logits[mask], targets[mask]) + out.aux_loss
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    want = torch.autograd.grad(ref, params, allow_unused=True, retain_graph=True)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        if w is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-7, msg=name)


class WholeInputMix(StickBreak):
    """This policy before issue 21: the mix became the token's whole next input."""

    def step(self, memo, view):
        d = super().step(memo, view)
        return Decision(halt=d.halt, state=d.memory, exit_state=d.exit_state)


def test_keys_values_from_the_mix_is_what_the_oracle_checks():
    """The test above can fail: feeding the mix as the token's whole input gives other logits."""
    model = model_for().eval()
    old = models.build(model.cfg, WholeInputMix(tau=0.1, stop=0.9, halt_bias=-1.0), vocab_size=V).double()
    old.load_state_dict(model.state_dict())
    tokens, mask, _ = batch()
    with torch.no_grad():
        ref, *_ = sut_reference(model, tokens, mask, model.policy.knobs.stop)
        new, before = model(tokens, mask), old(tokens, mask)
    torch.testing.assert_close(new.logits[mask], ref[mask], atol=1e-10, rtol=1e-10)
    assert not torch.allclose(before.logits[mask], ref[mask], atol=1e-4)


def test_gate_is_sut_shaped_and_starts_at_one_half():
    policy = policies.get("stickbreak", halt_bias=0.0)
    policy.bind(d_model=8, max_steps=4)
    lin1, act, lin2 = policy.gate
    assert isinstance(act, torch.nn.GELU) and lin1.out_features == 8
    assert lin2.bias is None and not lin2.weight.any()
    alpha = policy.alpha(torch.randn(2, 3, 8))
    assert torch.allclose(alpha, torch.full_like(alpha, 0.5))
