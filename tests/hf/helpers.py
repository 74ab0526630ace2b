"""Tiny random Llama-family models built in-process (no downloads) for the ponder.hf tests."""

from __future__ import annotations

import torch

CONFIGS = {  # name → LlamaConfig knobs (GQA, odd widths, one and many layers)
    "l4": dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2),
    "l3": dict(vocab_size=23, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
               num_attention_heads=2, num_key_value_heads=2),
    "l6": dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=6,
               num_attention_heads=6, num_key_value_heads=3),
}


def tiny(name: str = "l4", *, seed: int = 0, eos: int | None = None, head_scale: float = 1.0,
         dtype: torch.dtype = torch.float64):
    """A random ``LlamaForCausalLM`` in eval mode; float64 so that greedy comparisons against
    transformers' own loop never meet a rounding tie. ``head_scale`` sharpens the readout
    (random heads give near-uniform softmaxes: exits need some margin to fire)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(max_position_embeddings=128, bos_token_id=None, eos_token_id=eos,
                      pad_token_id=0, tie_word_embeddings=False, **CONFIGS[name])
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def prompt(model, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.config.vocab_size, (1, length), generator=g)
