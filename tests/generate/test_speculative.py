"""Speculative and self-speculative decoding: greedy output identical to plain greedy (tasks ×
seeds × kinds, several k and exit steps); the acceptance rule's output distribution equals
plain sampling (chi-square over 20,000 draws of the first 3 tokens on a 4-token vocabulary,
synthetic Markov models), and a wrong rule fails the same test; the vLLM-schema counters."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from ponder.errors import ConfigError
from ponder.generate import Sampling, generate
from ponder.generate.sampling import draw
from ponder.generate.speculative import accept, self_speculative_generate, speculative_generate

from tests.generate.helpers import lm_prompts, tiny_model

TASKS = ("addition", "dyck", "copy", "flipflop")


@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
@pytest.mark.parametrize("task", TASKS)
def test_greedy_speculative_equals_plain_greedy(task, kind):
    vocab, prompts, eos = lm_prompts(task, 3)
    stop = None  # (random models often write EOS first: no rounds to check)
    shorter = 0
    accepted = rejected = 0
    for seed in (0, 1):
        target = tiny_model(len(vocab), kind=kind, seed=seed, max_steps=4)
        draft = tiny_model(len(vocab), kind=kind, seed=seed + 10, max_steps=1, d_model=8, d_ff=16)
        plain = generate(target, prompts, max_new=10, eos=stop)
        for k, draft_stop in ((1, 0.0), (3, 0.0), (3, 0.5)):
            spec = speculative_generate(target, draft, prompts, k=k, max_new=10, eos=stop,
                                        draft_stop=draft_stop)
            assert spec.tokens == plain.tokens
            s = spec.stats
            per_pos = s.num_accepted_tokens_per_pos
            assert all(a >= b for a, b in zip(per_pos, per_pos[1:]))  # i-th only after (i-1)-th
            assert sum(per_pos) == s.num_accepted_tokens <= s.num_draft_tokens <= k * s.num_drafts
            if draft_stop:
                shorter += s.num_draft_tokens < k * s.num_drafts
            assert sum(s.histogram) == s.num_drafts
            assert s.emitted_tokens == sum(len(t) for t in plain.tokens)
            accepted += s.num_accepted_tokens
            rejected += s.num_draft_tokens - s.num_accepted_tokens
            assert sum(i * c for i, c in enumerate(s.histogram)) == s.num_accepted_tokens
        # the target as its own draft: every draft token is accepted
        same = speculative_generate(target, target, prompts, k=3, max_new=10, eos=stop)
        assert same.tokens == plain.tokens and same.stats.draft_acceptance_rate == 1.0
        # the target with a perturbed head as the draft: agrees often, not always
        noisy = tiny_model(len(vocab), kind=kind, seed=seed, max_steps=4)
        noise = torch.randn(noisy.readout.head.weight.shape, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(seed))
        noisy.readout.head.weight.data += 0.1 * noise
        spec = speculative_generate(target, noisy, prompts, k=3, max_new=10, eos=stop)
        assert spec.tokens == plain.tokens
        spec = speculative_generate(target, noisy, prompts, k=3, max_new=10, eos=stop, draft_stop=0.6)
        assert spec.tokens == plain.tokens
        shorter += spec.stats.num_draft_tokens < 3 * spec.stats.num_drafts
        accepted += spec.stats.num_accepted_tokens
        rejected += spec.stats.num_draft_tokens - spec.stats.num_accepted_tokens
    assert accepted > 0 and rejected > 0, "the test must exercise acceptance and rollback"
    assert shorter, "draft_stop must shorten some rounds"


@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
@pytest.mark.parametrize("task", TASKS)
def test_greedy_self_speculative_equals_plain_greedy(task, kind):
    vocab, prompts, eos = lm_prompts(task, 3)
    accepted = rejected = 0
    for seed in (0, 1):
        model = tiny_model(len(vocab), kind=kind, seed=seed, max_steps=4)
        plain = generate(model, prompts, max_new=10, eos=eos)
        for exit_step, k, stop in ((1, 1, 0), (1, 3, 0.5), (2, 2, 0), (3, 1, 0), (3, 4, 0.4), (4, 2, 0)):
            spec = self_speculative_generate(model, prompts, exit_step=exit_step, k=k,
                                             max_new=10, eos=eos, draft_stop=stop)
            assert spec.tokens == plain.tokens, (exit_step, k)
            if exit_step == 4:  # the draft is the whole model
                assert spec.stats.draft_acceptance_rate == 1.0
                # every round emits k + 1 tokens, and none is spent after EOS
                rounds = sum(-(-(len(t) - 1) // (k + 1)) for t in plain.tokens)
                assert spec.stats.num_drafts <= rounds
            else:
                accepted += spec.stats.num_accepted_tokens
                rejected += spec.stats.num_draft_tokens - spec.stats.num_accepted_tokens
    assert accepted > 0 and rejected > 0, "the test must exercise acceptance and rollback"


def test_sampled_speculative_runs_and_the_full_draft_accepts_everything():
    vocab, prompts, eos = lm_prompts("copy", 2)
    model = tiny_model(len(vocab), seed=2, max_steps=3)
    s = Sampling(temperature=1.0, top_p=0.95)
    out = self_speculative_generate(model, prompts, exit_step=3, k=3, max_new=8, eos=None,
                                    sampling=s, generator=torch.Generator().manual_seed(0))
    assert out.stats.draft_acceptance_rate == 1.0 and all(len(t) == 8 for t in out.tokens)
    draft = tiny_model(len(vocab), seed=9, max_steps=1)
    out = speculative_generate(model, draft, prompts, k=2, max_new=8, eos=None, sampling=s,
                               generator=torch.Generator().manual_seed(0))
    assert all(len(t) == 8 and all(0 <= x < len(vocab) for x in t) for t in out.tokens)
    assert 0.0 <= out.stats.draft_acceptance_rate < 1.0


# -- the distribution test on synthetic Markov models ------------------------------------
V, K, DRAFT_K, DRAWS = 4, 3, 2, 20_000


def markov(seed: int, sharp: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(V, V, generator=g, dtype=torch.float64), -1)


P, Q = markov(1, 1.5), markov(2, 1.0)   # target and (different) draft: next-token tables


def wrong_accept(p, q, drafts, generator=None):
    """A classic mistake: on rejection draw from p instead of the residual (p − q)+."""
    n, _ = accept(p, q, drafts, generator)
    rows = torch.arange(p.shape[0])
    return n, draw(p[rows, n], generator)


def speculate(rule, generator) -> torch.Tensor:
    """DRAWS sequences of K tokens after token 0, by rounds of DRAFT_K drafts from Q verified
    against P with ``rule`` → [DRAWS, K]."""
    M = DRAWS
    buf = torch.zeros(M, K + DRAFT_K + 1, dtype=torch.long)
    count = torch.zeros(M, dtype=torch.long)
    last = torch.zeros(M, dtype=torch.long)
    rows = torch.arange(M)
    while bool((count < K).any()):
        ds, qs, ps = [], [], []
        prev = last
        for _ in range(DRAFT_K):
            ps.append(P[prev])
            qs.append(Q[prev])
            prev = draw(Q[prev], generator)
            ds.append(prev)
        ps.append(P[prev])
        d = torch.stack(ds, 1)
        n, y = rule(torch.stack(ps, 1), torch.stack(qs, 1), d, generator)
        emitted = torch.cat([d, torch.zeros(M, 1, dtype=torch.long)], 1)
        emitted[rows, n] = y
        live = count < K
        for j in range(DRAFT_K + 1):
            put = live & (j <= n)
            col = (count + j).clamp(max=buf.shape[1] - 1)
            buf[rows[put], col[put]] = emitted[put, j]
        last = torch.where(live, emitted[rows, n], last)
        count = torch.where(live, count + n + 1, count)
    return buf[:, :K]


def exact_distribution() -> torch.Tensor:
    """Plain sampling's law of the first K tokens after token 0 → [V**K]."""
    law = torch.zeros(V ** K, dtype=torch.float64)
    for code in range(V ** K):
        digits = [(code // V ** (K - 1 - i)) % V for i in range(K)]
        prob, prev = 1.0, 0
        for x in digits:
            prob, prev = prob * float(P[prev, x]), x
        law[code] = prob
    return law


def chi2_pvalue(samples: torch.Tensor) -> float:
    codes = (samples * torch.tensor([V ** (K - 1 - i) for i in range(K)])).sum(1)
    counts = torch.bincount(codes, minlength=V ** K).double()
    expected = exact_distribution() * DRAWS
    return float(chisquare(counts.numpy(), expected.numpy()).pvalue)


def test_exact_distribution_is_plain_sampling():
    """(The reference law itself against plain ancestral sampling from P.)"""
    g = torch.Generator().manual_seed(11)
    x, toks = torch.zeros(DRAWS, dtype=torch.long), []
    for _ in range(K):
        x = draw(P[x], g)
        toks.append(x)
    assert chi2_pvalue(torch.stack(toks, 1)) > 1e-3


def test_speculative_sampling_matches_plain_sampling_and_a_wrong_rule_fails():
    good = chi2_pvalue(speculate(accept, torch.Generator().manual_seed(0)))
    bad = chi2_pvalue(speculate(wrong_accept, torch.Generator().manual_seed(0)))
    print(f"chi-square p-values: exact rule {good:.3g}, wrong rule {bad:.3g}")
    assert good > 1e-3, good
    assert bad < 1e-6, bad


def test_accept_rule_edge_cases():
    one = torch.eye(V, dtype=torch.float64)
    # greedy one-hots: accept while the draft is the target's arg-max, then emit the arg-max
    p = torch.stack([one[2], one[1], one[3]])[None]
    q = torch.stack([one[2], one[0]])[None]
    n, y = accept(p, q, torch.tensor([[2, 0]]))
    assert int(n) == 1 and int(y) == 1
    n, y = accept(p, torch.stack([one[2], one[1]])[None], torch.tensor([[2, 1]]))
    assert int(n) == 2 and int(y) == 3  # the bonus token
    n, y = accept(p[:, :1], q[:, :0], torch.zeros(1, 0, dtype=torch.long))
    assert int(n) == 0 and int(y) == 2  # no drafts: one plain step


def test_bad_input():
    vocab, prompts, eos = lm_prompts("copy", 1)
    model = tiny_model(len(vocab))
    with pytest.raises(ConfigError):
        self_speculative_generate(model, prompts, exit_step=0, k=2, max_new=4, eos=eos)
    with pytest.raises(ConfigError):
        self_speculative_generate(model, prompts, exit_step=1, k=-1, max_new=4, eos=eos)
    with pytest.raises(ConfigError):
        speculative_generate(model, tiny_model(len(vocab) + 1), prompts, k=2, max_new=4, eos=eos)
    with pytest.raises(ConfigError):
        speculative_generate(model, model, [[]], k=2, max_new=4, eos=eos)
    with pytest.raises(ConfigError):
        speculative_generate(model, model, prompts, k=2, max_new=4, eos=eos, draft_stop=1.5)


def test_greedy_fast_path_is_the_rule_on_one_hots():
    from ponder.generate.speculative import accept_greedy

    g = torch.Generator().manual_seed(3)
    greedy = Sampling()
    for _ in range(200):
        k = int(torch.randint(0, 4, (1,), generator=g))
        logits = torch.randn(k + 1, V, generator=g, dtype=torch.float64)
        best = logits.argmax(-1)
        # drafts that follow the arg-max for a random while, then deviate
        ds = [int(best[i]) if torch.rand(1, generator=g) < 0.7 else int((best[i] + 1) % V) for i in range(k)]
        q = torch.nn.functional.one_hot(torch.tensor(ds, dtype=torch.long), V).double().view(1, k, V)
        n, y = accept(greedy.probs(logits)[None], q, torch.tensor([ds], dtype=torch.long).view(1, k), g)
        assert accept_greedy(logits, ds) == (int(n[0]), int(y[0]))


# (kind, task, seed) whose random models write EOS at several lengths (at max_new too)
@pytest.mark.parametrize("kind,task,seed", [("recurrent", "dyck", 3), ("recurrent", "addition", 1),
                                            ("stacked", "dyck", 0), ("stacked", "copy", 2)])
def test_drafting_stops_at_an_eos_draft(kind, task, seed):
    """Nothing after an EOS draft is ever read (accepted, it ends the sequence; rejected, so
    are its successors), so drafting stops there and the EOS column is never opened. With
    the whole model as its own draft and k covering the answer, each sequence is one round:
    its drafts are exactly the tokens after the first up to EOS (or up to max_new − 1 and a
    bonus token), and the output stays the plain greedy output."""
    vocab, prompts, eos = lm_prompts(task, 6)
    max_new = 10
    model = tiny_model(len(vocab), kind=kind, seed=seed, max_steps=3)
    plain = generate(model, prompts, max_new=max_new, eos=eos)
    lengths = [len(t) for t in plain.tokens]
    early = [len(t) for t in plain.tokens if t[-1] == eos and 2 <= len(t) < max_new]
    assert early, "the test must see EOS drafted before max_new"

    def drafts(t: list[int]) -> int:  # the round drafts t[1:L], or t[1:L-1] and a bonus
        L = len(t)
        return 0 if L == 1 else L - 1 if t[-1] == eos and L < max_new else L - 2

    out = self_speculative_generate(model, prompts, exit_step=3, k=12, max_new=max_new, eos=eos)
    assert out.tokens == plain.tokens
    assert out.stats.num_draft_tokens == sum(drafts(t) for t in plain.tokens)
    assert out.stats.draft_acceptance_rate == 1.0
    # the prompt, then per round the pending column and every draft's but an EOS draft's
    assert out.stats.draft_forwards == sum(L if L > 1 else 1 for L in lengths)
    two = speculative_generate(model, model, prompts, k=12, max_new=max_new, eos=eos)
    assert two.tokens == plain.tokens
    assert two.stats.num_draft_tokens == sum(drafts(t) for t in plain.tokens)
