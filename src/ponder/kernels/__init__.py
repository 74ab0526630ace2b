"""Compiled CPU kernels, built on first use (``torch.utils.cpp_extension``; needs a C++
compiler and ``ninja``). Optional: when the build is impossible, or ``PONDER_KERNELS=0``,
:func:`load` returns False and the callers keep their PyTorch path.

All in ``varlen_attention.cpp``, registered as ``torch.ops.ponder_kernels.*``:

- ``varlen_attention``: attention of unpadded per-sequence query lists against each
  sequence's keys/values — what compacted execution needs once only some tokens of a sequence
  still run (see :func:`varlen_attention`); with every token a query it is also the inference
  attention of :class:`ponder.models.layers.Attention` when no token is padded;
- ``write_kv(cache, tokens, kv, src)``: keys/values of some tokens into a per-head cache
  ``[2, B, H, L, hd]``; ``copy_rows(dst, rows, src)``: ``dst[rows] = src`` along dim 0 — the
  row scatters of compacted steps, without ``index_copy_``'s per-index overhead.

The build is cached per source text, compiler flags, torch version and CPU model (the code is
compiled for the machine it runs on, ``-march=native``) under ``$PONDER_KERNEL_DIR`` or
``~/.cache/ponder/kernels``; it takes ~10–20 s once.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("varlen_attention.cpp")
# -fopenmp: at::parallel_for is inline OpenMP; without it the kernels would run on one thread
FLAGS = ["-O3", "-march=native", "-fopenmp"]
HEAD_DIMS = (8, 16, 32, 64)   # the head sizes the kernel is instantiated for

_state: dict = {}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_dir(tag: str) -> Path:
    root = os.environ.get("PONDER_KERNEL_DIR") or Path.home() / ".cache" / "ponder" / "kernels"
    path = Path(root) / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def load() -> bool:
    """Build (once per machine) and load the kernels; False when unavailable (warned once)."""
    if "ok" in _state:
        return _state["ok"]
    if os.environ.get("PONDER_KERNELS", "1") == "0":
        _state["ok"] = False
        return False
    text = SOURCE.read_bytes()
    key = hashlib.sha256(text + " ".join(FLAGS).encode() + torch.__version__.encode()
                         + _cpu_model().encode()).hexdigest()[:16]
    name = f"ponder_kernels_{key}"
    try:
        from torch.utils.cpp_extension import load as build
        where = _build_dir(key)
        if not (where / f"{name}.so").exists():
            print(f"ponder: building the compiled kernels in {where} (once, ~15 s)", file=sys.stderr,
                  flush=True)
        build(name=name, sources=[str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
              is_python_module=False, build_directory=str(where), verbose=False)
        _state["ok"] = True
    except Exception as err:  # no compiler, no ninja, unwritable cache: keep the PyTorch path
        warnings.warn(f"ponder: compiled kernels unavailable ({type(err).__name__}: "
                      f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); "
                      "using the PyTorch path", RuntimeWarning, stacklevel=2)
        _state["ok"] = False
    return _state["ok"]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor,
                     *, pos: Optional[torch.Tensor] = None, key_mask: Optional[torch.Tensor] = None,
                     scale: Optional[float] = None) -> torch.Tensor:
    """Softmax attention of variable-length query lists, no padding.

    q        [T, H·hd] float32, contiguous: the queries, grouped by sequence (those of
             sequence b are rows ``starts[b]:starts[b+1]``), heads side by side as in the
             output of a query projection
    k, v     [B, H, L, hd] (any strides, hd contiguous): every sequence's keys/values
    starts   [B + 1] long: offsets of each sequence's queries in q
    pos      [T] long: each query's position — given, keys after it are masked (causal)
    key_mask [B, L] bool: keys each sequence may attend to (None: all)
    → [T, H·hd], the same layout as q (what the output projection takes).
    Requires :func:`load` to have returned True; no autograd (inference only).
    """
    hd = k.shape[-1]
    if scale is None:
        scale = hd ** -0.5
    empty = starts.new_empty(0)
    return torch.ops.ponder_kernels.varlen_attention(
        q, k, v, starts, empty if pos is None else pos, key_mask, pos is not None, float(scale))
