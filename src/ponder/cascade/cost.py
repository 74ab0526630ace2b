"""Measured cost per example: forward FLOPs (config + steps each token used) and wall time.

FLOPs reuse :func:`ponder.analysis.compute.token_flops` (the formula documented there); an
example's cost is the sum over its scored tokens. Wall time is measured per batch in the same
process as every other model (after a warm-up forward, the least of three timed ones) and
shared equally by the batch's examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ponder.analysis.compute import model_dims, token_flops
from ponder.analysis.load import RunData


def example_flops(frame: pd.DataFrame, info: dict[str, Any], n_examples: int) -> np.ndarray:
    """FLOPs per example, [n_examples]. ``frame`` has one row per scored token with columns
    split, example, position, steps, max_steps; ``info`` the run metadata (dims, vocab_size)."""
    run = RunData(run_dir=Path("."), records=frame, summaries={}, info=info)
    dims, _ = model_dims(run)
    adaptive, _ = token_flops(frame, dims)
    out = np.zeros(n_examples)
    np.add.at(out, frame["example"].to_numpy(dtype=int), adaptive)
    return out
