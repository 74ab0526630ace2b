"""Autoregressive generation: cached incremental decoding, per-token exits at decode time,
speculative and self-speculative decoding, and their acceptance metrics.

>>> from ponder.generate import Sampling, generate
>>> out = generate(model, [prompt_ids], max_new=8, eos=eos_id, sampling=Sampling())
"""

from ponder.generate.cache import KVCache
from ponder.generate.decode import Chunk, Decoder, check_decodable
from ponder.generate.loop import Generation, generate
from ponder.generate.sampling import Sampling

__all__ = ["KVCache", "Chunk", "Decoder", "check_decodable", "Generation", "generate", "Sampling"]
