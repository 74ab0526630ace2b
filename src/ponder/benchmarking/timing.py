"""Interleaved timing: every candidate is timed once per round, in a shuffled order.

Interleaving spreads the machine's load drifts (other processes on a shared machine) over
all candidates alike; medians of the rounds discard the outliers.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from typing import Callable, Optional


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                seed: int = 0, on_round: Optional[Callable[[int, int], None]] = None,
                cpu: Optional[dict[str, list[float]]] = None) -> dict[str, list[float]]:
    """Time each ``fns[name]()`` ``repeats`` times (after ``warmup`` untimed rounds).

    → name → list of wall-clock seconds (one per timed round); ``cpu``, when given, receives
    the process CPU seconds of the same calls (less disturbed by other processes on a shared
    machine, since time spent preempted is not counted). ``on_round(done, total)`` reports
    progress.
    """
    rng = random.Random(seed)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    total = warmup + repeats
    for r in range(total):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            c0 = time.process_time()
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            dc = time.process_time() - c0
            if r >= warmup:
                times[name].append(dt)
                if cpu is not None:
                    cpu.setdefault(name, []).append(dc)
        if on_round is not None:
            on_round(r + 1, total)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """Relative half-width of the inter-quartile range (a noise indicator), 0 for < 4 values."""
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2 / statistics.median(values)


def machine(threads: int) -> dict:
    """What a benchmark record says about where it ran: cores, threads, versions, load."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg": [round(x, 2) for x in load],
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def emit(doc: dict, *, out_path: Optional[str], as_json: bool, out) -> None:
    """Write a benchmark's JSON document to ``out_path`` (atomic) and/or print it on stdout."""
    import json
    from pathlib import Path

    from ponder.train.checkpoint import atomic_write_text

    text = json.dumps(doc, indent=1)
    if out_path:
        atomic_write_text(Path(out_path), text + "\n")
        print(f"wrote {out_path}", file=out)
    if as_json:
        print(text)
