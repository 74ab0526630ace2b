"""``ponder cascade``: measure the runs, fit the rule, choose thresholds, evaluate, write.

Examples 0..n-1 of the split are shuffled (seeded) into three parts: *fit* (40 %: the rule's
classifiers), *calibrate* (30 %: thresholds) and *test* (30 %: every number reported).
Outputs in ``--out``: ``pareto.png`` (:mod:`.plot`), ``records.parquet`` (one row per test example: which run answered, its
cost, correct) and ``summary.json`` (the rule's accuracy and cost, each run alone, the
cost–quality curve, the deferral rate per complexity level, the calibration log).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ponder.cascade.calibrate import budget_thresholds, ltt_threshold
from ponder.cascade.outcomes import Outcomes, combine, measure_run
from ponder.cascade.route import Routing, route
from ponder.cascade.rules import build_rule
from ponder.errors import ConfigError

PARTS = (("fit", 0.4), ("calibrate", 0.3), ("test", 0.3))
CURVE_POINTS = 21


def split_parts(n: int, seed: int) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(n * PARTS[0][1]), int(n * (PARTS[0][1] + PARTS[1][1]))
    return {"fit": np.sort(perm[:a]), "calibrate": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def _point(r: Routing, data: Outcomes) -> dict[str, float]:
    return {"accuracy": float(r.correct.mean()), "flops": float(r.flops.mean()),
            "flops_rel_largest": float(r.flops.mean() / data.flops[-1].mean()),
            "wall_us": float(r.wall_s.mean() * 1e6)}


def deferral_by_complexity(r: Routing, data: Outcomes) -> dict[str, dict[str, Any]]:
    """Per complexity level: examples, share answered by each run, share deferred past the first."""
    out = {}
    for c in np.unique(data.complexity):
        m = data.complexity == c
        out[str(int(c))] = {"n": int(m.sum()), "deferred": float((r.chosen[m] > 0).mean()),
                            "answered_by": {name: float((r.chosen[m] == k).mean())
                                            for k, name in enumerate(data.names)}}
    return out


def curve(data: Outcomes, scores: np.ndarray, *, sequential: bool) -> list[dict[str, float]]:
    """Accuracy and cost over a sweep of one shared threshold (quantiles of the scores)."""
    lams = np.unique(np.quantile(scores, np.linspace(0, 1, CURVE_POINTS)))
    pts = []
    for lam in list(lams) + [math.inf]:
        p = _point(route(data, scores, lam, sequential=sequential), data)
        pts.append({"threshold": float(lam), **p})
    return pts


def matching_cost(points: list[dict[str, float]], target: float) -> float | None:
    """The least FLOPs of a curve point whose accuracy reaches ``target`` (None: none does)."""
    ok = [p["flops"] for p in points if p["accuracy"] >= target - 1e-12]
    return min(ok) if ok else None


def cascade(run_dirs: Sequence[str], *, rule: str, split: str = "valid", n: int = 1000,
            target_risk: float | None = None, budget: float | None = None, epsilon: float = 0.1,
            p_value: str = "binomial", confidence: str = "max_softmax", seed: int = 0,
            threads: int = 1) -> tuple[dict[str, Any], dict[str, list]]:
    """Everything but the writing: (summary, per-test-example record columns)."""
    import torch

    if target_risk is not None and budget is not None:
        raise ConfigError("give --target-risk or --budget, not both")
    if target_risk is None and budget is None:
        target_risk = 0.05
    if n < 20:
        raise ConfigError(f"--n must be >= 20 (three parts need examples), got {n}")
    if len(run_dirs) < 2:
        raise ConfigError("a cascade needs at least two runs (ordered by cost)")
    knobs = {"confidence": confidence} if rule == "idk" else {}
    r = build_rule(rule, **knobs)
    torch.set_num_threads(threads)
    data = combine([measure_run(d, split=split, n=n) for d in run_dirs])
    parts = split_parts(n, seed)
    fit, cal, test = (data.subset(parts[p]) for p in ("fit", "calibrate", "test"))
    r.fit(fit, seed=seed)
    cal_scores, test_scores = r.scores(cal), r.scores(test)
    calib: dict[str, Any]
    if target_risk is not None:
        lam, tested = ltt_threshold(cal, cal_scores, sequential=r.sequential, delta=target_risk,
                                    epsilon=epsilon, p_value=p_value)
        thresholds = np.full(data.k - 1, lam)
        calib = {"method": "ltt", "delta": target_risk, "epsilon": epsilon, "p_value": p_value,
                 "tested": len(tested), "threshold": lam}
    else:
        thresholds = budget_thresholds(cal, cal_scores, sequential=r.sequential, budget=budget)
        calib = {"method": "budget", "budget": budget, "thresholds": thresholds.tolist()}
    chosen = route(test, test_scores, thresholds, sequential=r.sequential)
    singles = {}
    for k, name in enumerate(data.names):
        only = Routing(np.full(test.correct.shape[1], k), test.correct[k], test.flops[k], test.wall_s[k])
        singles[name] = _point(only, test)
    pts = curve(test, test_scores, sequential=r.sequential)
    largest = singles[data.names[-1]]["accuracy"]
    summary = {
        "rule": rule, "sequential": r.sequential, "runs": data.names, "split": split, "n": n,
        "parts": {p: int(len(v)) for p, v in parts.items()}, "seed": seed,
        "confidence": confidence if rule == "idk" else None, "calibration": calib,
        "test": {**_point(chosen, test),
                 "answered_by": {nm: float((chosen.chosen == k).mean()) for k, nm in enumerate(data.names)},
                 "gap_to_largest": largest - float(chosen.correct.mean())},
        "single": singles, "curve": pts,
        "flops_to_match_largest": matching_cost(pts, largest),
        "deferral_by_complexity": deferral_by_complexity(chosen, test),
    }
    records = {"example": parts["test"].tolist(), "complexity": test.complexity.tolist(),
               "answered_by": [data.names[k] for k in chosen.chosen],
               "stage": chosen.chosen.tolist(), "flops": chosen.flops.tolist(),
               "wall_s": chosen.wall_s.tolist(), "correct": chosen.correct.tolist()}
    return summary, records


def write_outputs(out: Path | str, summary: dict[str, Any], records: dict[str, list]) -> None:
    """``records.parquet`` and ``summary.json``, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ponder.cascade.plot import pareto_png
    from ponder.train.checkpoint import atomic_write_bytes, atomic_write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    buf = io.BytesIO()
    pq.write_table(pa.table(records), buf)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "records.parquet", buf.getvalue())
    atomic_write_bytes(out / "pareto.png", pareto_png(summary))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
