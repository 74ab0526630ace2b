"""Wall-clock benchmarks behind ``ponder bench``.

- :mod:`~ponder.benchmarking.timing`: interleaved repeats with warm-up, medians;
- :mod:`~ponder.benchmarking.inference`: full-depth vs masked-dense vs compacted execution
  over a grid of widths, lengths and depth profiles;
- :mod:`~ponder.benchmarking.training`: forward+backward cost of every halting policy
  against the fixed-depth model of the same size, and compacted training;
- :mod:`~ponder.benchmarking.fff`, :mod:`~ponder.benchmarking.structured` (``--part ffn``):
  the fast feedforward tree at inference against a dense FFN of the same total width, the
  structured FFN kinds against the dense FFN of the same parameters;
- :mod:`~ponder.benchmarking.routing`: the training step of Mixture-of-Depths against the
  dense model, next to their FLOPs ratio;
- :mod:`~ponder.benchmarking.experts`: routed-expert FFNs against a dense FFN with the same
  active parameters;
- :mod:`~ponder.benchmarking.decode` (``--part decode``): tokens/s of CALM exits, speculative
  and self-speculative decoding against plain cached decoding of an LM-view run.
"""

__all__ = ["decode", "experts", "fff", "inference", "routing", "structured", "timing", "training"]


def __getattr__(name: str):
    """The submodules on first use (``ponder.benchmarking.experts`` without importing it)."""
    if name in __all__:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
