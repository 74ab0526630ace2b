"""Self-speculation on Hugging Face Llama models: greedy output equals transformers' plain
greedy ``generate`` exactly (3 tiny random configs × seeds × prompts × draft depths × k,
with and without an EOS that stops it), through the ``custom_generate`` callable; the
acceptance counters add up; the per-layer readout at the last layer is the model's forward."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from ponder.hf.selfspec import hf_self_speculative_generate, self_speculative_custom_generate  # noqa: E402
from ponder.hf.stack import LayerStack  # noqa: E402

from tests.hf.helpers import prompt, tiny  # noqa: E402

CASES = [("l4", 0, 5), ("l4", 1, 1), ("l3", 2, 9), ("l6", 3, 4)]


@pytest.mark.parametrize("name,seed,plen", CASES)
def test_greedy_self_speculation_equals_plain_generate(name, seed, plen):
    model = tiny(name, seed=seed)
    L = model.config.num_hidden_layers
    for p in range(2):
        ids = prompt(model, plen + p, seed * 10 + p)
        ref = model.generate(ids, do_sample=False, max_new_tokens=14)
        for E in sorted({1, L - 1, L}):
            for k in ((1, 4) if E < L else (3,)):
                stats = []
                out = model.generate(ids, do_sample=False, max_new_tokens=14,
                                     custom_generate=self_speculative_custom_generate,
                                     exit_layer=E, draft_k=k, spec_stats=stats)
                assert torch.equal(out, ref), (name, seed, p, E, k)
                s = stats[0]
                assert s.num_drafts == sum(s.histogram)
                assert s.num_accepted_tokens == sum(s.num_accepted_tokens_per_pos)
                assert s.emitted_tokens == ref.shape[1] - ids.shape[1]
                if E == L:  # the draft is the model: every draft is accepted
                    assert s.num_accepted_tokens == s.num_draft_tokens


def test_eager_attention_gets_explicit_masks():
    model = tiny("l4", seed=8)
    model.set_attn_implementation("eager")  # no causal flag: every chunk needs its mask
    ids = prompt(model, 6, 8)
    ref = model.generate(ids, do_sample=False, max_new_tokens=12)
    for E in (1, 3):
        out = model.generate(ids, do_sample=False, max_new_tokens=12, exit_layer=E, draft_k=3,
                             custom_generate=self_speculative_custom_generate)
        assert torch.equal(out, ref)


def test_eos_stops_like_plain_generate():
    model = tiny("l4", seed=4)
    ids = prompt(model, 6, 4)
    free = model.generate(ids, do_sample=False, max_new_tokens=16)
    eos = int(free[0, ids.shape[1] + 4])  # a token plain greedy writes 5th
    model.generation_config.eos_token_id = eos
    ref = model.generate(ids, do_sample=False, max_new_tokens=16)
    assert ref.shape[1] < free.shape[1] and int(ref[0, -1]) == eos
    for E in (1, 2, 3):
        out = model.generate(ids, do_sample=False, max_new_tokens=16, exit_layer=E, draft_k=4,
                             custom_generate=self_speculative_custom_generate)
        assert torch.equal(out, ref)


def test_same_prompt_length_batch_is_decoded_row_by_row():
    model = tiny("l3", seed=5)
    ids = torch.cat([prompt(model, 5, 1), prompt(model, 5, 2)])
    ref = torch.cat([model.generate(ids[i:i + 1], do_sample=False, max_new_tokens=10) for i in range(2)])
    out = model.generate(ids, do_sample=False, max_new_tokens=10, exit_layer=1, draft_k=3,
                         custom_generate=self_speculative_custom_generate)
    assert torch.equal(out, ref)


def test_last_layer_readout_is_the_models_forward():
    model = tiny("l4", seed=6)
    ids = prompt(model, 9, 6)
    per_layer = LayerStack(model).layer_logits(ids)
    assert per_layer.shape == (4, 1, 9, model.config.vocab_size)
    torch.testing.assert_close(per_layer[-1], model(ids).logits, rtol=0, atol=1e-10)


def test_sampled_self_speculation_with_the_full_draft_accepts_everything():
    from ponder.generate import Sampling

    model = tiny("l3", seed=7)
    res = hf_self_speculative_generate(model, [prompt(model, 4, 7)[0].tolist()], exit_layer=3, k=3,
                                       max_new=12, eos=None, sampling=Sampling(temperature=1.0),
                                       generator=torch.Generator().manual_seed(0))
    assert len(res.tokens[0]) == 12
    assert res.stats.num_accepted_tokens == res.stats.num_draft_tokens > 0
