"""Experts against complexity: does a routed-expert model send hard tokens to other experts?

From the eval records' ``expert`` column (a token's first-choice expert in the last routed
FFN it entered; written by models with a routed FFN kind), per split:

* ``table``: token counts per (complexity, expert) — the expert × complexity heat map;
* ``load``: the share of the tokens per expert;
* ``mutual_information_bits``: I(expert; complexity) = Σ p(e, c) log₂ p(e, c) / (p(e) p(c)),
  of the empirical joint distribution, with ``normalised`` = I / min(H(expert), H(complexity))
  (0: experts ignore difficulty; 1: the expert determines the complexity or vice versa), and
  the same quantity with complexity shuffled across tokens (``shuffled_bits``, seeded): the
  value that the finite sample alone gives.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ponder.analysis.load import RunData


def mutual_information(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(I(a; b), H(a), H(b)) in bits of the empirical joint distribution of two int arrays."""
    if a.size == 0:
        return 0.0, 0.0, 0.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log2(p[nz] / np.outer(pa, pb)[nz])).sum())
    h = lambda q: float(-(q[q > 0] * np.log2(q[q > 0])).sum())  # noqa: E731
    return max(mi, 0.0), h(pa), h(pb)


def analyse_split(frame: pd.DataFrame, *, seed: int = 0) -> Optional[dict[str, Any]]:
    """The expert × complexity table and mutual information of one split (None: no experts)."""
    if "expert" not in frame.columns:
        return None
    rows = frame[frame["expert"].notna()]
    if not len(rows):
        return None
    e = rows["expert"].to_numpy().astype(np.int64)
    c = rows["complexity"].to_numpy().astype(np.int64)
    mi, he, hc = mutual_information(e, c)
    shuffled, _, _ = mutual_information(e, np.random.default_rng(seed).permutation(c))
    experts = sorted(int(v) for v in np.unique(e))
    table = {int(cv): {int(ev): int(n) for ev, n in zip(*np.unique(e[c == cv], return_counts=True))}
             for cv in sorted(np.unique(c))}
    return {"tokens": int(len(rows)), "experts": experts,
            "load": {int(ev): float((e == ev).mean()) for ev in experts},
            "table": table, "mutual_information_bits": mi,
            "normalised": mi / min(he, hc) if min(he, hc) > 0 else 0.0,
            "entropy_expert_bits": he, "entropy_complexity_bits": hc, "shuffled_bits": shuffled}


def analyse(run: RunData, *, seed: int = 0) -> dict[str, Any]:
    """split → :func:`analyse_split` (splits without an ``expert`` column are left out)."""
    out = {}
    for i, split in enumerate(run.splits):
        result = analyse_split(run.split(split), seed=seed + 1000 * i)
        if result is not None:
            out[split] = result
    return out
