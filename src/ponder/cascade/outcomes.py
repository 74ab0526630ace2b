"""Per-example outcomes of one trained run, measured by re-running its last checkpoint.

The run is loaded with :func:`ponder.eval.evaluate.load_run` (the loader of ``ponder eval``).
For examples ``0..n-1`` of a split it records, per example:

* ``correct``     every scored token right (the example's answer is right)
* confidences     over the example's scored tokens, the *least* confident one decides (the
                  answer is right only if all are): ``max_softmax`` = min of top-1 prob,
                  ``margin`` = min of top-1 − top-2, ``entropy`` = minus the max entropy
                  (negated so that larger always means more confident)
* ``flops``, ``wall_s``  measured cost (:mod:`.cost`)
* ``complexity``  the largest complexity of its scored tokens
* ``features``    from the input alone: length and the normalised token histogram
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ponder.cascade.cost import example_flops
from ponder.errors import ConfigError, PonderError
from ponder.tasks import IGNORE_INDEX, collate

CONFIDENCES = ("max_softmax", "margin", "entropy")
WALL_REPEATS = 3  # timed forwards per batch after one warm-up; the fastest one counts


def _timed_forward(model, batch):
    """(output, seconds) of ``model`` on ``batch``: one untimed warm-up forward (lazy
    initialisation, caches, a first kernel build would otherwise be charged to the first
    batch of the first run), then the least of ``WALL_REPEATS`` timed ones — the least is the
    figure a busy machine disturbs least."""
    out = model(batch.tokens, batch.mask)
    best = float("inf")
    for _ in range(WALL_REPEATS):
        t0 = time.perf_counter()
        model(batch.tokens, batch.mask)
        best = min(best, time.perf_counter() - t0)
    return out, best


@dataclass
class RunOutcomes:
    """One run's measurements over examples 0..n-1. Arrays are [n]; ``features`` [n, F]."""

    name: str
    task_key: str
    correct: np.ndarray
    confidence: dict[str, np.ndarray]
    flops: np.ndarray
    wall_s: np.ndarray
    complexity: np.ndarray
    features: np.ndarray


@dataclass
class Outcomes:
    """K runs (ordered by cost) over the same n examples. Arrays are [K, n] unless noted."""

    names: list[str]
    correct: np.ndarray
    confidence: dict[str, np.ndarray]
    flops: np.ndarray
    wall_s: np.ndarray
    complexity: np.ndarray   # [n]
    features: np.ndarray     # [n, F]

    @property
    def k(self) -> int:
        return len(self.names)

    def subset(self, idx: np.ndarray) -> "Outcomes":
        return Outcomes(self.names, self.correct[:, idx],
                        {c: v[:, idx] for c, v in self.confidence.items()}, self.flops[:, idx],
                        self.wall_s[:, idx], self.complexity[idx], self.features[idx])


def _task_key(cfg) -> str:
    t = cfg.task
    return f"{t.name}/{t.preset}/{sorted(dict(t.knobs).items())}"


@torch.no_grad()
def measure_run(run_dir: Path | str, *, split: str, n: int, batch_size: int = 256) -> RunOutcomes:
    """Re-run the last checkpoint of ``run_dir`` on examples 0..n-1 of ``split``."""
    from ponder.eval.evaluate import load_run, run_metadata

    try:
        run = load_run(run_dir)
    except PonderError as exc:
        raise ConfigError(f"cannot read run {str(run_dir)!r}: {exc}") from None
    except Exception as exc:  # a corrupt file surfaces as any library's error
        raise ConfigError(f"cannot read run {str(run_dir)!r}: {type(exc).__name__}: {exc}") from None
    task, vocab, model = run.task, run.vocab, run.model
    correct = np.zeros(n, bool)
    conf = {c: np.zeros(n) for c in CONFIDENCES}
    wall = np.zeros(n)
    complexity = np.zeros(n, int)
    hist = np.zeros((n, len(vocab)))
    length = np.zeros(n)
    rows: dict[str, list] = {"split": [], "example": [], "position": [], "steps": [], "max_steps": []}
    for start in range(0, n, batch_size):
        examples = [task.example(split, i) for i in range(start, min(n, start + batch_size))]
        batch = collate(examples, vocab)
        out, elapsed = _timed_forward(model, batch)
        logp = torch.log_softmax(out.logits.double(), -1)              # [B, T, V]
        top2 = logp.exp().topk(2, -1).values                            # [B, T, 2]
        entropy = -(logp.exp() * logp).sum(-1)                          # [B, T]
        scored = batch.targets != IGNORE_INDEX
        right = (out.logits.argmax(-1) == batch.targets) | ~scored
        for b, ex in enumerate(examples):
            i = ex.index
            s = scored[b]
            wall[i] = elapsed / len(examples)
            positions = s.nonzero().flatten().tolist()
            if not positions:
                raise ConfigError(f"example {i} of {split!r} has no scored token")
            correct[i] = bool(right[b].all())
            conf["max_softmax"][i] = float(top2[b, s, 0].min())
            conf["margin"][i] = float((top2[b, s, 0] - top2[b, s, 1]).min())
            conf["entropy"][i] = -float(entropy[b, s].max())
            complexity[i] = max(int(ex.complexity[p]) for p in positions)
            ids = batch.tokens[b, batch.mask[b].bool()]
            length[i] = len(ids)
            hist[i] = np.bincount(ids.numpy(), minlength=len(vocab)) / max(1, len(ids))
            for p in positions:
                rows["split"].append(split)
                rows["example"].append(i)
                rows["position"].append(p)
                rows["steps"].append(int(out.steps[b, p]))
                rows["max_steps"].append(run.cfg.model.max_steps)
    info = {**run_metadata(run.cfg, run.step), "core": run.cfg.model.core, "vocab_size": len(vocab)}
    flops = example_flops(pd.DataFrame(rows), info, n)
    features = np.concatenate([length[:, None], hist], 1)
    return RunOutcomes(Path(run_dir).name, _task_key(run.cfg), correct, conf, flops, wall,
                       complexity, features)


def combine(runs: Sequence[RunOutcomes]) -> Outcomes:
    """Stack runs of one task into :class:`Outcomes` (bad input → ConfigError)."""
    if len(runs) < 2:
        raise ConfigError("a cascade needs at least two runs (ordered by cost)")
    keys = {r.task_key for r in runs}
    if len(keys) > 1:
        raise ConfigError(f"runs of different tasks cannot be cascaded: {', '.join(sorted(keys))}")
    first = runs[0]
    if any(not np.array_equal(r.complexity, first.complexity) for r in runs):
        raise ConfigError("the runs do not score the same examples")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    return Outcomes(names, np.stack([r.correct for r in runs]),
                    {c: np.stack([r.confidence[c] for r in runs]) for c in CONFIDENCES},
                    np.stack([r.flops for r in runs]), np.stack([r.wall_s for r in runs]),
                    first.complexity, first.features)
