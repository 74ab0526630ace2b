"""Compute: what the adaptive run spent, next to a fixed-depth run of the same model.

* **token-steps** — Σ over scored tokens of the steps they took; the fixed-depth baseline
  spends ``max_steps`` on every token (``fixed_token_steps`` = tokens × max_steps).
* **FLOPs (forward, estimate)** — one Transformer block costs, per token,

      block(L) = 8·d² (Q, K, V, O projections) + 4·d·d_ff (MLP) + 4·L·d (scores + weighted sum)

  FLOPs (a multiply-add counts 2), with L the example's length (last scored position + 1, a
  lower bound when trailing positions are unscored). A token then costs
  ``(prelude + coda)·block(L) + steps·core·block(L) + 2·d·V`` (readout; omitted when the
  vocabulary size is unknown). Halted tokens stay visible as keys, so L does not shrink.
  Halting heads, norms and embeddings are ignored (< 1% at these sizes). The fixed baseline is
  the same sum with ``steps = max_steps``. Model sizes come from the records' ``ponder_run``
  metadata (``d_model``, ``d_ff``, ``prelude``, ``core``, ``coda``, ``vocab_size``, also
  under a ``model`` key), else from ``config.yaml``'s ``model`` section, else the
  :class:`~ponder.models.config.ModelConfig` defaults (then ``dims_assumed`` is true).
* **wall time** — the eval's measured ``wall_s``, µs per token and µs per token-step; the
  report sets it against a fixed-policy run of the same task when one is compared (time
  saved, and efficiency = compute ratio / time ratio: 1 when time follows the token-steps).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd

from ponder.analysis.load import RunData
from ponder.models.config import ModelConfig

DIM_KEYS = ("d_model", "d_ff", "prelude", "core", "coda")
FORMULA = ("tokens x [(prelude+coda)*block(L) + steps*core*block(L) + 2*d*V], "
           "block(L) = 8*d^2 + 4*d*d_ff + 4*L*d")


def model_dims(run: RunData) -> tuple[dict[str, int], bool]:
    """(dims, assumed): the sizes used by the FLOPs estimate and whether any was a default."""
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    sources = [run.info, run.info.get("model") or {}, (run.config or {}).get("model") or {}]
    dims: dict[str, int] = {}
    assumed = False
    for key in DIM_KEYS:
        found = next((s[key] for s in sources if isinstance(s, dict) and key in s), None)
        if found is None:
            found, assumed = defaults[key], True
        dims[key] = int(found)
    vocab = next((s.get("vocab_size") for s in sources if isinstance(s, dict) and s.get("vocab_size")), None)
    dims["vocab_size"] = int(vocab) if vocab else 0
    return dims, assumed


def flops(frame: pd.DataFrame, dims: dict[str, int]) -> tuple[float, float]:
    """(adaptive, fixed) forward FLOPs of the split's scored tokens. The adaptive figure is the
    records' measured ``flops`` column when every row has it (what each token really used,
    true for every kind: routers, experts, AdaTape's tape); else the block formula."""
    adaptive, fixed = token_flops(frame, dims)
    if "flops" in frame.columns and len(frame) and bool(frame["flops"].notna().all()):
        return float(frame["flops"].sum()), float(np.sum(fixed))
    return float(np.sum(adaptive)), float(np.sum(fixed))


def token_flops(frame: pd.DataFrame, dims: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(adaptive, fixed) forward FLOPs of each scored token by the block formula, [tokens]
    each (row order kept)."""
    d, d_ff = dims["d_model"], dims["d_ff"]
    length = frame.groupby(["split", "example"])["position"].transform("max").to_numpy(dtype=float) + 1
    block = 8.0 * d * d + 4.0 * d * d_ff + 4.0 * length * d            # [tokens]
    outer = (dims["prelude"] + dims["coda"]) * block + 2.0 * d * dims["vocab_size"]
    steps = frame["steps"].to_numpy(dtype=float)
    full = frame["max_steps"].to_numpy(dtype=float)
    return outer + steps * dims["core"] * block, outer + full * dims["core"] * block


def analyse(run: RunData) -> dict[str, dict[str, Any]]:
    dims, assumed = model_dims(run)
    out: dict[str, dict[str, Any]] = {}
    for split in run.splits:
        frame = run.split(split)
        n = int(len(frame))
        token_steps = int(frame["steps"].sum())
        fixed_steps = int(frame["max_steps"].sum())
        adaptive_flops, fixed_flops = flops(frame, dims) if n else (0.0, 0.0)
        summary = run.summaries.get(split, {})
        wall = summary.get("wall_s")
        entry = {
            "n_tokens": n,
            "token_steps": token_steps,
            "fixed_token_steps": fixed_steps,
            "step_ratio": token_steps / fixed_steps if fixed_steps else None,
            "steps_saved": 1 - token_steps / fixed_steps if fixed_steps else None,
            "mean_steps": float(frame["steps"].mean()) if n else None,
            "max_steps": int(frame["max_steps"].max()) if n else None,
            "flops": {
                "adaptive": adaptive_flops,
                "fixed": fixed_flops,
                "ratio": adaptive_flops / fixed_flops if fixed_flops else None,
                "saved": 1 - adaptive_flops / fixed_flops if fixed_flops else None,
                "dims": dims,
                "dims_assumed": assumed,
                "formula": FORMULA,
                "measured": bool("flops" in frame.columns and n and frame["flops"].notna().all()),
            },
            "wall_s": float(wall) if wall is not None else None,
            "wall_us_per_token": float(wall) / n * 1e6 if wall is not None and n else None,
            "wall_us_per_token_step": (float(wall) / token_steps * 1e6
                                       if wall is not None and token_steps else None),
        }
        given = summary.get("fixed_token_steps")
        if given is not None and int(given) != fixed_steps:
            entry["note"] = f"eval summary says fixed_token_steps={given}; records give {fixed_steps}"
        out[split] = entry
    return out
