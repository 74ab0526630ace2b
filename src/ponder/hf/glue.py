"""What a ``custom_generate`` callable needs from transformers' ``generate`` call.

transformers 5.x ``model.generate(ids, custom_generate=fn, **kw)`` prepares the inputs and
the generation config, then calls ``fn(model, input_ids, logits_processor=…,
stopping_criteria=…, generation_config=…, **model_kwargs)``; keyword arguments of ``fn``
that ``GenerationMixin._sample`` does not take (e.g. ``exit_layer``) are passed through from
the ``generate`` call. These helpers read the config into ponder's terms and write the
result the way plain ``generate`` returns it ([B, prompt + generated] ids).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ponder.errors import ConfigError
from ponder.generate.sampling import Sampling


def sampling_of(generation_config) -> Sampling:
    """Greedy unless ``do_sample``; then temperature, top-k and top-p (ponder's
    :class:`Sampling`; other logits processors are not applied)."""
    if not getattr(generation_config, "do_sample", False):
        return Sampling()
    t = generation_config.temperature
    return Sampling(temperature=1.0 if t is None else float(t),
                    top_k=int(generation_config.top_k or 0),
                    top_p=1.0 if generation_config.top_p is None else float(generation_config.top_p))


def eos_of(generation_config) -> Optional[int]:
    """The one EOS id (None: none); several distinct ids → ConfigError."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return None
    ids = sorted({int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])})
    if len(ids) > 1:
        raise ConfigError(f"ponder.hf decodes with one EOS id, the generation config has {ids}")
    return ids[0] if ids else None


def max_new_of(generation_config, prompt_length: int) -> int:
    n = int(generation_config.max_length) - prompt_length
    if n < 1:
        raise ConfigError(f"max_length={generation_config.max_length} leaves no room after a "
                          f"prompt of {prompt_length} tokens")
    return n


def rows_of(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> list[list[int]]:
    """The prompts, one per row; padded batches are refused (each row is decoded alone)."""
    if attention_mask is not None and not bool((attention_mask == 1).all()):
        raise ConfigError("ponder.hf decodes unpadded prompts (give one prompt per call or "
                          "prompts of one length)")
    return input_ids.tolist()


def as_sequences(prompts: list[list[int]], generated: list[list[int]], pad: int,
                 device: torch.device) -> torch.Tensor:
    """[B, prompt + longest generation] ids, shorter rows padded with ``pad`` (as plain
    ``generate`` pads finished rows)."""
    rows = [p + g for p, g in zip(prompts, generated)]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def pad_of(generation_config, eos: Optional[int]) -> int:
    pad = getattr(generation_config, "pad_token_id", None)
    return int(pad) if pad is not None else (eos if eos is not None else 0)


def generator_of(seed: Optional[int]) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def per_row(fn: Callable[[list[int], int], list[int]], model, input_ids: torch.Tensor,
            generation_config, model_kwargs: dict) -> torch.Tensor:
    """Run ``fn(prompt, max_new) → generated ids`` on every row; → plain ``generate``'s output."""
    prompts = rows_of(input_ids, model_kwargs.get("attention_mask"))
    max_new = max_new_of(generation_config, input_ids.shape[1])
    out = [fn(p, max_new) for p in prompts]
    return as_sequences(prompts, out, pad_of(generation_config, eos_of(generation_config)),
                        input_ids.device)
