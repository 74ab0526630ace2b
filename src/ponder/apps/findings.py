"""The ANIRA paper's three findings, decided per task from the runs' results (pure functions).

A result row (one run) is a dict with ``task``, ``policy``, ``seed``, ``valid_acc``,
``ood_acc``, ``rho`` (Spearman steps↔complexity on valid; None when the steps are constant),
``timing`` (the nonlinear decision-timing probe on valid, ``analysis.json``'s
``decision_timing.valid.nonlinear``, or None) and ``failed`` (bool). Failed runs are left out.

1. **alignment** without supervision: the seeds' ρ has a CI (Student t over seeds) above 0;
   a run with constant steps counts as ρ = 0 (no alignment).
2. **no generalisation** to larger sizes: the policy learned the task in distribution (mean
   valid accuracy ≥ ``LEARNED``) and the CI over seeds of valid − ood accuracy lies above
   ``WELL_BELOW``.
3. **timing**: the probe's R²(execution) − R²(static) has a CI above 0 ("execution") or below
   0 ("static"); expected: anira_o → execution, anira_e → static. With ≥ 2 seeds the CI is
   over seeds (of the per-seed estimates); with one seed, that seed's bootstrap CI over
   held-out examples.

Per policy a verdict is ``yes`` / ``no`` / ``undetermined`` (with why); a task's verdict
combines those of its ANIRA policies with finished runs: ``yes`` (all), ``partly`` (some),
``undetermined``, ``no``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

LEARNED = 0.9        # mean valid accuracy for "learned in distribution"
WELL_BELOW = 0.10    # "well below": valid − ood accuracy above this (CI)
CONFIDENCE = 0.95
ANIRA = ("anira_e", "anira_o")
EXPECTED_TIMING = {"anira_e": "static", "anira_o": "execution"}
ADAPTIVE = ("anira_e", "anira_o", "pondernet", "act")
FINDINGS = ("alignment", "no_generalisation", "timing")


def mean_ci(values: Iterable[float]) -> Optional[dict[str, Any]]:
    """Mean and its two-sided ``CONFIDENCE`` Student-t interval over ``values`` (the seeds);
    ``ci`` None for one value; None for none."""
    from scipy.stats import t

    xs = [float(v) for v in values]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return {"mean": mean, "ci": None, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = float(t.ppf(0.5 + CONFIDENCE / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(xs)}


def _verdict(ok: Optional[bool], stats: Optional[dict[str, Any]], why: str) -> dict[str, Any]:
    return {"verdict": "undetermined" if ok is None else ("yes" if ok else "no"),
            "stats": stats, "why": why}


def alignment(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rhos = [0.0 if r["rho"] is None else float(r["rho"]) for r in rows]
    constant = sum(r["rho"] is None for r in rows)
    stats = mean_ci(rhos)
    note = f"; {constant} run(s) with constant steps count as ρ = 0" if constant else ""
    if stats is None:
        return _verdict(None, None, "no runs")
    if stats["ci"] is None:
        return _verdict(None, stats, "one seed: no CI over seeds" + note)
    lo = stats["ci"][0]
    return _verdict(lo > 0, stats, f"CI of ρ {'above' if lo > 0 else 'reaches'} 0{note}")


def no_generalisation(rows: list[dict[str, Any]]) -> dict[str, Any]:
    valid = mean_ci(r["valid_acc"] for r in rows if r["valid_acc"] is not None)
    gaps = [r["valid_acc"] - r["ood_acc"] for r in rows
            if r["valid_acc"] is not None and r["ood_acc"] is not None]
    stats = mean_ci(gaps)
    if stats is None or valid is None:
        return _verdict(None, None, "no evaluated runs")
    stats = {**stats, "valid_acc": valid["mean"]}
    if valid["mean"] < LEARNED:
        return _verdict(None, stats, f"not learned in distribution (mean valid acc "
                                     f"{valid['mean']:.3f} < {LEARNED})")
    if stats["ci"] is None:
        return _verdict(None, stats, "one seed: no CI over seeds")
    lo = stats["ci"][0]
    return _verdict(lo > WELL_BELOW, stats, f"CI of valid − ood acc {'above' if lo > WELL_BELOW else 'reaches'} "
                                            f"{WELL_BELOW}")


def timing_side(rows: list[dict[str, Any]]) -> tuple[Optional[str], Optional[dict[str, Any]], str]:
    """("execution" | "static" | "undecided" | "nothing" | None, stats, why) of a policy's runs."""
    probes = [r["timing"] for r in rows
              if r.get("timing") and r["timing"].get("execution_minus_static")]
    if not probes:
        return None, None, "no probe (steps constant, or no execution features)"
    if all(p.get("explained_by") == "nothing" for p in probes):
        return "nothing", None, "neither group explains the steps (R² < 0.05)"
    estimates = [p["execution_minus_static"]["estimate"] for p in probes]
    if len(probes) == 1:
        ci = probes[0]["execution_minus_static"].get("ci")
        stats = {"mean": estimates[0], "ci": ci, "n": 1, "over": "held-out examples (bootstrap)"}
    else:
        stats = {**mean_ci(estimates), "over": "seeds"}
        ci = stats["ci"]
    if ci is None:
        return "undecided", stats, "no CI"
    side = "execution" if ci[0] > 0 else "static" if ci[1] < 0 else "undecided"
    return side, stats, f"CI of R²(execution) − R²(static) over {stats['over']}"


def timing(policy: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    side, stats, why = timing_side(rows)
    expected = EXPECTED_TIMING.get(policy)
    out = _verdict(None if side is None or expected is None else side == expected, stats,
                   f"{why} → {side or '—'}" + (f" (expected {expected})" if expected else ""))
    out["side"] = side
    return out


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == "yes" for v in verdicts):
        return "yes"
    if any(v == "yes" for v in verdicts):
        return "partly"
    if any(v == "undetermined" for v in verdicts) or not verdicts:
        return "undetermined"
    return "no"


def task_findings(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{task: {finding: {"verdict": ..., "policies": {policy: verdict dict}}}}``: the three
    findings per task; the policies judged are the adaptive ones present (timing: ANIRA's)."""
    out: dict[str, dict[str, Any]] = {}
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        mine = [r for r in rows if r["task"] == task and not r.get("failed")]
        per: dict[str, dict[str, Any]] = {f: {} for f in FINDINGS}
        for policy in ADAPTIVE:
            runs = [r for r in mine if r["policy"] == policy]
            if not runs:
                continue
            per["alignment"][policy] = alignment(runs)
            per["no_generalisation"][policy] = no_generalisation(runs)
            if policy in EXPECTED_TIMING:
                per["timing"][policy] = timing(policy, runs)
        out[task] = {f: {"verdict": combine([v["verdict"] for p, v in per[f].items() if p in ANIRA]),
                         "policies": per[f]} for f in FINDINGS}
    return out
