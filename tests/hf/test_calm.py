"""CALM exits on Hugging Face Llama models: a token exits at layer l only if the rule fired
there and at no allowed layer before (checked against a slow, cache-free reference pass that
replays the exit schedule); λ = 1 and λ = ∞ never exit (output = plain greedy ``generate``);
λ = 0 exits at the first allowed layer; the propagated keys/values equal the reference's."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from ponder.generate.exits import ConfidenceExit  # noqa: E402
from ponder.hf.calm import calm_custom_generate, calm_generate  # noqa: E402
from ponder.hf.stack import LayerStack  # noqa: E402
from ponder.policies.confidence import saturation, softmax_margin  # noqa: E402

from tests.hf.helpers import prompt, tiny  # noqa: E402


def reference(stack: LayerStack, seq: list[int], layers_run: list[int]):
    """The whole sequence in one cache-free chunk, position t running only its first
    ``layers_run[t]`` layers and passing its frozen state on above them (every row of a layer
    call still yields keys/values from its input: the frozen state's, as CALM propagates).
    → (states after each layer [L] × [T, D] with the embedding first, the cache it wrote)."""
    ids = torch.tensor([seq])
    cache = stack.new_cache()
    h = stack.embed(ids)
    T = ids.shape[1]
    pos = torch.arange(T)[None]
    pe = stack.rope(h, pos)
    keys = torch.arange(T)
    mask = torch.zeros(T, T, dtype=h.dtype).masked_fill(keys[None] > keys[:, None], -math.inf)[None, None]
    states = [h[0]]
    for i in range(stack.L):
        out = stack.layer(i, h, pe=pe, mask=mask, positions=pos, cache=cache)
        runs = torch.tensor([i < n for n in layers_run])[None, :, None]
        h = torch.where(runs, out, h)
        states.append(h[0])
    return states, cache


@pytest.mark.parametrize("measure,lam,min_layer", [("softmax", 0.3, 1), ("softmax", 0.6, 2),
                                                   ("saturation", 0.94, 1)])
def test_exits_fire_exactly_where_the_rule_does_and_propagation_matches(measure, lam, min_layer):
    model = tiny("l6", seed=1, head_scale=20.0)
    stack = LayerStack(model)
    L = stack.L
    rule = ConfidenceExit(threshold=lam, measure=measure)
    mixed = set()
    for s in range(3):
        p = prompt(model, 5, s)[0].tolist()
        cache = stack.new_cache()
        res = calm_generate(model, p, rule=rule, max_new=16, eos=None, min_layer=min_layer,
                            stack=stack, cache=cache)
        seq = p + res.tokens[:-1]       # every token fed to the model
        run = [L] * len(p) + res.layers
        states, ref_cache = reference(stack, seq, run)
        for j, n_run in enumerate(res.layers):
            t = len(p) + j
            fired = []
            for n in range(min_layer, L):
                h, prev = states[n][t], states[n - 1][t]
                c = (softmax_margin(stack.readout(h)) if measure == "softmax"
                     else saturation(h, prev))
                fired.append(float(c) >= lam)
            first = next((min_layer + i for i, f in enumerate(fired) if f), L)
            assert n_run == first, (s, j, fired)
            mixed.add(n_run == L)
            # the token written is the reference's readout at its exit state
            assert res.tokens[j + 1] == int(stack.readout(states[n_run][t]).argmax())
        for i in range(L):  # skipped layers' keys/values: those of the frozen state
            torch.testing.assert_close(cache.layers[i].keys, ref_cache.layers[i].keys, rtol=0, atol=1e-9)
            torch.testing.assert_close(cache.layers[i].values, ref_cache.layers[i].values, rtol=0, atol=1e-9)
    assert mixed == {True, False}, "the case should see both exits and full-depth tokens"


@pytest.mark.parametrize("lam", [1.0, math.inf])
def test_threshold_one_or_more_never_exits(lam):
    model = tiny("l4", seed=2, head_scale=20.0)
    ids = prompt(model, 6, 2)
    ref = model.generate(ids, do_sample=False, max_new_tokens=12)
    stats = []
    out = model.generate(ids, do_sample=False, max_new_tokens=12, custom_generate=calm_custom_generate,
                         exit_rule=ConfidenceExit(threshold=lam), calm_stats=stats)
    assert torch.equal(out, ref)
    assert stats[0].layers == [4] * 11


@pytest.mark.parametrize("min_layer", [1, 3])
def test_threshold_zero_exits_at_the_first_allowed_layer(min_layer):
    model = tiny("l4", seed=3)
    stats = []
    out = model.generate(prompt(model, 4, 3), do_sample=False, max_new_tokens=10,
                         custom_generate=calm_custom_generate, exit_rule="softmax:0",
                         min_exit_layer=min_layer, calm_stats=stats)
    assert out.shape == (1, 14)
    assert stats[0].layers == [min_layer] * 9
