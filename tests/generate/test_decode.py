"""Cached incremental decoding against the uncached forward (float64): plain decoding over
tasks, seeds, kinds and positions; per-token exits (propagated keys/values) against the
engine under a policy halting the same tokens at the same steps; the oracle fill; bad input."""

from __future__ import annotations

import pytest
import torch

from ponder.errors import ConfigError
from ponder.generate import Decoder, Sampling, generate
from ponder.generate.exits import ConfidenceExit, parse_exit, rule_from_policy
from ponder.policies.scripted import ScriptedPolicy

from tests.generate.helpers import lm_prompts, tiny_model

TASKS = ("addition", "dyck", "flipflop", "listops", "copy")


def reference_logits(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """The uncached forward over prompt + generated (but the last): the logits [n_new, V]
    each generated token was drawn from."""
    seq = torch.tensor([prompt + generated[:-1]])
    return model(seq).logits[0, len(prompt) - 1:]


CASES = [(task, kind, positions) for task in TASKS for kind in ("recurrent", "stacked")
         for positions in ("learned", "rotary", "none")
         if positions == "learned" or task in ("addition", "dyck")]


@pytest.mark.parametrize("task,kind,positions", CASES)
def test_cached_decoding_equals_the_uncached_forward(task, kind, positions):
    vocab, prompts, eos = lm_prompts(task, 3)
    for seed in (0, 1):
        model = tiny_model(len(vocab), kind=kind, seed=seed, positions=positions)
        samplings = (Sampling(), Sampling(temperature=1.3, top_p=0.9), Sampling(temperature=0.7, top_k=3))
        for sampling in samplings[seed:seed + 2]:
            gen = torch.Generator().manual_seed(seed)
            out = generate(model, prompts, max_new=6, eos=eos, sampling=sampling, generator=gen,
                           keep_logits=True)
            for b, prompt in enumerate(prompts):
                got = torch.stack(out.logits[b])
                ref = reference_logits(model, prompt, out.tokens[b])
                torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
                assert out.steps[b] == [model.cfg.max_steps] * len(out.tokens[b])
                # FLOPs per token: what the model's own count gives at that position
                flops = model(torch.tensor([prompt + out.tokens[b][:-1]])).flops[0, len(prompt) - 1:]
                assert out.flops[b] == pytest.approx(flops.tolist(), rel=1e-12)


def test_sampling_is_seeded_and_batch_independent():
    vocab, prompts, eos = lm_prompts("copy", 4)
    model = tiny_model(len(vocab), seed=3)
    s = Sampling(temperature=1.0)
    a = generate(model, prompts, max_new=5, eos=None, sampling=s, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompts, max_new=5, eos=None, sampling=s, generator=torch.Generator().manual_seed(7))
    assert a.tokens == b.tokens
    greedy_batch = generate(model, prompts, max_new=5, eos=None)
    for i, p in enumerate(prompts):
        assert generate(model, [p], max_new=5, eos=None).tokens[0] == greedy_batch.tokens[i]


def test_processors():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert Sampling().probs(z).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    p = Sampling(temperature=1.0, top_k=2).probs(z)[0]
    assert p[2:].sum() == 0 and p[0] / p[1] == pytest.approx(torch.e)
    full = torch.softmax(z.double(), -1)[0]
    p = Sampling(temperature=1.0, top_p=float(full[0]) + 1e-9).probs(z)[0]
    assert (p > 0).tolist() == [True, True, False, False]
    p = Sampling(temperature=1.0, top_p=float(full[0]) - 1e-9).probs(z)[0]
    assert p.tolist() == [1.0, 0.0, 0.0, 0.0]
    t = Sampling(temperature=2.0).probs(z)[0]
    torch.testing.assert_close(t, torch.softmax(z.double()[0] / 2, -1))
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2)):
        with pytest.raises(ConfigError):
            Sampling(**bad)


class PlannedExit:
    """A rule that exits token (sample b, position t) after step plan(b, t) (test only)."""

    needs_logits = False

    def __init__(self, plan):
        self.plan = plan

    def __call__(self, *, n, max_steps, h, prev, logits, position):
        B, T = position.shape
        want = torch.tensor([[self.plan(b, int(position[b, t])) for t in range(T)] for b in range(B)])
        return want <= n


@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exits_with_propagated_states_equal_the_engine(kind, seed):
    """Per-sample exits in a batch: the decoded logits equal the uncached forward under a
    policy halting every generated token at the step it exited at (state copying)."""
    vocab, prompts, eos = lm_prompts("addition", 3)
    model = tiny_model(len(vocab), kind=kind, seed=seed, max_steps=4)
    N = model.cfg.max_steps
    plan = lambda b, t: 1 + (3 * b + t + seed) % N  # noqa: E731 - differs by sample and position
    out = generate(model, prompts, max_new=7, eos=None, rule=PlannedExit(plan), keep_logits=True,
                   sampling=Sampling(temperature=1.0), generator=torch.Generator().manual_seed(seed))
    for b, prompt in enumerate(prompts):
        toks = out.tokens[b]
        positions = range(len(prompt) - 1, len(prompt) + len(toks) - 1)
        assert out.steps[b][1:] == [plan(b, t) for t in positions][1:]  # the first is the prompt's
        seq = prompt + toks[:-1]
        steps = torch.full((1, len(seq)), N, dtype=torch.long)
        for t in range(len(prompt), len(seq)):
            steps[0, t] = plan(b, t)
        model.policy = ScriptedPolicy(steps=steps)
        try:
            ref = model(torch.tensor([seq])).logits[0, len(prompt) - 1:]
            assert model(torch.tensor([seq])).steps[0].tolist() == steps[0].tolist()
        finally:
            model.policy = tiny_model(len(vocab), kind=kind, seed=seed, max_steps=4).policy
        torch.testing.assert_close(torch.stack(out.logits[b]), ref, rtol=0, atol=1e-10)
        # fewer FLOPs than full depth exactly where the token exited early
        assert all(f < out.flops[b][0] * 1.5 for f in out.flops[b])


@pytest.mark.parametrize("measure", ["softmax", "saturation", "classifier"])
def test_confidence_policy_exits_the_same_when_decoding(measure):
    """No coda: the decode-time readout is the per-step readout, so decoding with the model's
    confidence policy exits each token where the uncached forward under that policy does."""
    vocab, prompts, eos = lm_prompts("dyck", 2)
    from ponder.policies import get as get_policy

    lam = {"softmax": 0.04, "saturation": 0.8, "classifier": 0.5}[measure]
    policy = get_policy("confidence", threshold=lam, measure=measure, decay=True, decay_length=16)
    model = tiny_model(len(vocab), seed=5, policy=policy, coda=0, max_steps=5)
    rule = rule_from_policy(model.policy)
    out = generate(model, prompts, max_new=8, eos=None, rule=rule, keep_logits=True,
                   exit_prompt=True)
    early = 0
    for b, prompt in enumerate(prompts):
        seq = prompt + out.tokens[b][:-1]
        ref = model(torch.tensor([seq]))
        torch.testing.assert_close(torch.stack(out.logits[b]), ref.logits[0, len(prompt) - 1:],
                                   rtol=0, atol=1e-10)
        # the generated tokens (after the prompt's last) exit where the policy does
        assert out.steps[b][1:] == ref.steps[0, len(prompt):].tolist()
        early += sum(s < 5 for s in out.steps[b][1:])
    if measure != "classifier":  # (an untrained classifier may sit on either side of λ)
        assert early > 0, "the test must exercise exits"


def test_oracle_fill_keeps_the_full_depth_cache():
    """fill=recompute: exited tokens still run every step for the cache, so a token that
    does not exit sees exactly the full-depth model's keys (its logits equal the plain ones)."""
    vocab, prompts, eos = lm_prompts("flipflop", 2)
    model = tiny_model(len(vocab), seed=4, max_steps=4)
    plan = lambda b, t: 1 if t % 2 else 4  # noqa: E731 - odd positions exit after step 1
    plain = generate(model, prompts, max_new=6, eos=None, keep_logits=True)
    # force the plain tokens through the oracle decoder
    for b, prompt in enumerate(prompts):
        dec = Decoder(model, batch=1)
        chunk = dec.extend(torch.tensor([prompt]))
        toks = plain.tokens[b]
        for j, tok in enumerate(toks[:-1]):
            chunk = dec.extend(torch.tensor([[tok]]), rule=PlannedExit(lambda _, t: plan(b, t)),
                               fill="recompute")
            t = len(prompt) + j
            if t % 2 == 0:
                torch.testing.assert_close(chunk.logits[0, 0], plain.logits[b][j + 1], rtol=0, atol=1e-10)
                assert int(chunk.steps[0, 0]) == 4
            else:
                assert int(chunk.steps[0, 0]) == 1
                assert not torch.allclose(chunk.logits[0, 0], plain.logits[b][j + 1])


def test_bad_input():
    vocab, prompts, eos = lm_prompts("copy", 1)
    with pytest.raises(ConfigError, match="causal"):
        Decoder(tiny_model(len(vocab), causal=False), batch=1)
    routed = tiny_model(len(vocab))
    routed.core.blocks[0].router = torch.nn.Identity()  # (no router kind is registered yet)
    with pytest.raises(ConfigError, match="router"):
        Decoder(routed, batch=1)
    model = tiny_model(len(vocab))
    with pytest.raises(ConfigError, match="eval"):
        Decoder(tiny_model(len(vocab)).train(), batch=1)
    dec = Decoder(model, batch=1)
    with pytest.raises(ConfigError):
        dec.extend(torch.tensor([prompts[0]]), depth=9)
    with pytest.raises(ConfigError):
        dec.extend(torch.tensor([prompts[0]]), fill="magic")
    with pytest.raises(ConfigError):
        generate(model, [[]], max_new=3, eos=None)
    with pytest.raises(ConfigError):
        generate(model, prompts, max_new=0, eos=None)
    with pytest.raises(ConfigError):
        parse_exit("softmax")
    with pytest.raises(ConfigError):
        parse_exit("nope:0.5")
    with pytest.raises(ConfigError):
        parse_exit("softmax:1.5")
    with pytest.raises(ConfigError):
        parse_exit("classifier:0.5")  # no exit head
    with pytest.raises(ConfigError):
        rule_from_policy(model.policy)
    assert isinstance(parse_exit("saturation:0.99:decay"), ConfidenceExit)


def test_learn_then_test_at_decode_time():
    """The calibrated λ is what fixed-sequence testing gives on the per-sequence disagreements
    counted by a direct loop (exit decoding vs full-depth greedy)."""
    from ponder.generate.exits import calibrate_exit
    from ponder.policies.calibration import fixed_sequence_test

    vocab, prompts, eos = lm_prompts("copy", 12)
    model = tiny_model(len(vocab), seed=6, max_steps=4)
    cands = [0.02, 0.05, 0.1, 0.3]
    full = [generate(model, [p], max_new=6, eos=eos).tokens[0] for p in prompts]
    counts = []
    for lam in cands:
        rule = ConfidenceExit(threshold=lam, measure="softmax")
        counts.append(sum(generate(model, [p], max_new=6, eos=eos, rule=rule).tokens[0] != f
                          for p, f in zip(prompts, full)))
    for delta, eps in ((0.3, 0.2), (0.6, 0.3), (0.05, 0.1)):
        got = calibrate_exit(model, prompts, measure="softmax", candidates=cands, delta=delta,
                             epsilon=eps, max_new=6, eos=eos, batch=5)
        want = fixed_sequence_test(cands, counts, len(prompts), delta=delta, epsilon=eps)
        assert got.threshold == want.threshold and got.tested == want.tested
    assert min(counts) < max(counts), "the candidates must exercise disagreement"
    with pytest.raises(ConfigError):
        calibrate_exit(model, prompts, measure="softmax", candidates=[], delta=0.1, epsilon=0.1,
                       max_new=3, eos=eos)


def test_generation_without_the_flop_count_is_the_same_generation():
    """``count_flops=False`` (the timed rounds of the decode bench) changes nothing but the
    missing FLOP figures, with pads and EOS-stopped rows in the batch too."""
    vocab, prompts, eos = lm_prompts("addition", 4)
    model = tiny_model(len(vocab), kind="stacked", seed=0)
    for rule in (None, ConfidenceExit(threshold=0.3)):
        a = generate(model, prompts, max_new=8, eos=eos, rule=rule)
        b = generate(model, prompts, max_new=8, eos=eos, rule=rule, count_flops=False)
        assert a.tokens == b.tokens and a.steps == b.steps and a.forwards == b.forwards
        assert b.flops == [[] for _ in prompts] and all(len(f) == len(t) for f, t in zip(a.flops, a.tokens))
