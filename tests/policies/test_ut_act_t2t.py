"""UT-ACT's default ``t2t`` semantics against a float64 transcription of tensor2tensor's loop.

The oracle is ``universal_transformer_act`` of tensorflow/tensor2tensor,
``tensor2tensor/models/research/universal_transformer_util.py`` (``ut_function`` inside a
``tf.while_loop``), written out with the model's own modules: every position is transformed at
every step (halted ones too; others attend to their evolving state), the halting unit reads
the step's input with the step signal, ``new_state = transformed·w + previous·(1 − w)`` from 0,
no remainder for a position still running at N, loss weight τ·mean(n_updates + remainders).
"""

from __future__ import annotations

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
from ponder.models.config import ModelConfig
from ponder.models.layers import AttnContext
from tests.batches import padded_batch

V, N, B, L = 11, 6, 4, 9


def batch():
    return padded_batch(vocab=V, B=B, L=L, short=4)


def model_for(semantics: str, causal: bool = False, kind: str = "recurrent", seed: int = 0,
              scale: float = 0.3):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=kind, d_model=16, n_heads=2, d_ff=32, prelude=1, core=1, coda=1,
                      max_steps=N, causal=causal, positions="none", execution="dense")
    model = models.build(cfg, policies.get("ut_act", tau=0.05, halt_bias=1.0, semantics=semantics),
                         vocab_size=V)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # spread the halting steps
        # (bias +1 is t2t's act_halting_bias_init)
        model.policy.head.weight.copy_(scale * torch.randn(model.policy.head.weight.shape, generator=g))
    return model.double()


def t2t_reference(model, tokens, mask, eps: float, tau: float):
    """→ (logits [B, L, V], n_updates [B, L], aux loss, steps the engine may charge [B])."""
    ctx = AttnContext.build(mask, causal=model.cfg.causal)
    head = model.policy.head
    state = model.prelude(model.embed(tokens), ctx)
    previous = torch.zeros_like(state)
    prob = [[0.0] * L for _ in range(B)]
    rem = [[0.0] * L for _ in range(B)]
    n_upd = [[0] * L for _ in range(B)]
    prob_t = torch.zeros(B, L, dtype=state.dtype)   # the same sums, with their graph
    all_halted_at = [N] * B
    threshold = 1.0 - eps
    for step in range(1, N + 1):
        if not any(prob[b][t] < threshold and n_upd[b][t] < N
                   for b in range(B) for t in range(L) if mask[b, t]):
            break  # tf.while_loop's should_continue
        e = model.step_vector(step)                                 # None in a stacked model
        s = state + e if e is not None else state                   # step_preprocess
        p = torch.sigmoid(head(s).squeeze(-1))                      # [B, L]
        still = torch.zeros(B, L, dtype=torch.bool)
        new = torch.zeros(B, L, dtype=torch.bool)
        for b in range(B):
            for t in range(L):
                running = prob[b][t] < 1.0
                pv = float(p[b, t].detach())
                new[b, t] = running and prob[b][t] + pv > threshold
                still[b, t] = running and prob[b][t] + pv <= threshold
                if still[b, t]:
                    prob[b][t] += pv
                if new[b, t]:
                    rem[b][t] = 1.0 - prob[b][t]
                    prob[b][t] = 1.0
                n_upd[b][t] += int(still[b, t] or new[b, t])
        remainder_t = torch.where(new, 1 - prob_t, torch.zeros_like(prob_t))
        w = torch.where(still, p, remainder_t)[..., None]
        prob_t = torch.where(still, prob_t + p, torch.where(new, torch.ones_like(prob_t), prob_t))
        if step == 1:
            rem_t = remainder_t
        else:
            rem_t = rem_t + remainder_t
        transformed = model.core_group(step)(s, ctx)                 # every position
        previous = transformed * w + previous * (1 - w)
        state = transformed
        for b in range(B):
            if all_halted_at[b] == N and all(prob[b][t] >= 1.0 for t in range(L) if mask[b, t]):
                all_halted_at[b] = step
    logits = model.readout(previous, ctx)
    cost = torch.tensor(n_upd, dtype=state.dtype) + rem_t
    m = mask.to(state.dtype)
    aux = tau * (cost * m).sum() / m.sum()
    for b in range(B):
        for t in range(L):
            if mask[b, t]:
                assert rem_t[b, t].item() == pytest.approx(rem[b][t], abs=1e-12)
    return logits, torch.tensor(n_upd), aux, torch.tensor(all_halted_at)


@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
@pytest.mark.parametrize("training", [False, True])
def test_t2t_semantics_match_the_tensor2tensor_loop(kind, training):
    model = model_for("t2t", kind=kind).train(training)
    tokens, mask, targets = batch()
    out = model(tokens, mask)
    ref_logits, n_upd, ref_aux, seq_steps = t2t_reference(model, tokens, mask, model.policy.knobs.eps,
                                                          model.policy.knobs.tau)
    torch.testing.assert_close(out.logits[mask], ref_logits[mask], atol=1e-10, rtol=1e-10)
    assert torch.equal(out.halt_step[mask], n_upd[mask])
    torch.testing.assert_close(out.aux_loss, ref_aux, atol=1e-12, rtol=1e-12)
    # a sequence is frozen once all its real tokens halted (nothing can change after that)
    assert torch.equal(out.steps, torch.where(mask, seq_steps[:, None].expand(B, L), 0))
    # non-trivial: tokens halt at several steps, and some keep being transformed after halting
    assert len(torch.unique(n_upd[mask])) >= 3
    assert bool((n_upd[mask] < out.steps[mask]).any())
    assert bool((seq_steps < N).any())  # and a whole sequence was frozen early
    assert torch.allclose(out.halt_dist.sum(-1)[mask], torch.ones(()).double())
    if training:  # the gradients are the reference loop's
        loss, _ = model.loss(out, targets)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        ref_ce = torch.nn.functional.cross_entropy(ref_logits[mask], targets[mask])
        ref_grads = torch.autograd.grad(ref_ce + ref_aux, list(model.parameters()), allow_unused=True)
        for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
            if r is None:
                assert g is None or not g.any(), name
            else:
                torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-7, msg=name)


def test_frozen_semantics_are_a_different_model():
    """The documented knob keeps the old behaviour, and the oracle above tells them apart."""
    tokens, mask, _ = batch()
    t2t, frozen = model_for("t2t").eval(), model_for("frozen").eval()
    with torch.no_grad():
        a, b = t2t(tokens, mask), frozen(tokens, mask)
        ref_logits, *_ = t2t_reference(t2t, tokens, mask, 0.01, 0.05)
    assert not torch.allclose(a.logits[mask], b.logits[mask], atol=1e-4)
    assert not torch.allclose(b.logits[mask], ref_logits[mask], atol=1e-4)
    # frozen: each token's compute is its own halting step (remainder forced at N)
    assert torch.equal(b.steps[mask], b.halt_step[mask])


def test_causal_t2t_freezes_nothing_before_n():
    model = model_for("t2t", causal=True).eval()
    tokens, mask, _ = batch()
    with torch.no_grad():
        out = model(tokens, mask)
        ref_logits, n_upd, *_ = t2t_reference(model, tokens, mask, 0.01, 0.05)
    assert (out.steps[mask] == N).all()
    assert torch.equal(out.halt_step[mask], n_upd[mask])
    torch.testing.assert_close(out.logits[mask], ref_logits[mask], atol=1e-10, rtol=1e-10)


def test_unknown_semantics_is_a_config_error():
    from ponder.errors import ConfigError
    with pytest.raises(ConfigError):
        policies.get("ut_act", semantics="tf")
