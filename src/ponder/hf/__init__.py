"""A bridge to Hugging Face causal LMs (the optional extra ``ponder[hf]``): per-layer
readout, CALM per-token exits and LayerSkip self-speculation for any Llama-family
``*ForCausalLM``, a fine-tuning recipe for early exit, and a benchmark against plain
``generate``.

>>> from ponder.hf import self_speculative_custom_generate
>>> model.generate(ids, custom_generate=self_speculative_custom_generate, exit_layer=2,
...                max_new_tokens=32, do_sample=False)

Importing ``ponder.hf`` needs no transformers; the names below load it when first used
(a missing transformers is one ConfigError line).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "LayerStack": "ponder.hf.stack",
    "check_llama_family": "ponder.hf.stack",
    "calm_generate": "ponder.hf.calm",
    "calm_custom_generate": "ponder.hf.calm",
    "CalmResult": "ponder.hf.calm",
    "hf_self_speculative_generate": "ponder.hf.selfspec",
    "self_speculative_custom_generate": "ponder.hf.selfspec",
    "tiny_llama": "ponder.hf.recipe",
    "train_early_exit": "ponder.hf.recipe",
    "layer_agreement": "ponder.hf.agreement",
    "bench_hf": "ponder.hf.bench",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ponder.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
