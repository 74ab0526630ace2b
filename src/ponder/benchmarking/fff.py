"""``ponder bench --part ffn`` (first table): the fast feedforward tree at inference against a dense FFN of
the same total width.

For d_model ∈ {128, 256} with d_ff = 8·d_model and ``tokens`` rows (batch × seq flattened;
4,096, ``--quick``: 1,024), times the ``dense`` FFN (width d_ff) and ``fff`` of depth
d ∈ {2, 4, 6} with leaves of width d_ff / 2^d (so the leaves' total width is d_ff), both in
eval mode under ``torch.no_grad`` in float32, interleaved in one run (``timing.interleaved``).
Also times fff's soft training-mode forward (every leaf), which costs about a dense FFN.
Reports per configuration the time ratio fff / dense (< 1: faster) and the FLOPs ratio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from ponder.benchmarking.timing import interleaved, median, spread
from ponder.models.fff import FastFeedForward, FFFKnobs
from ponder.models.layers import MLP

D_MODELS = (128, 256)
DEPTHS = (2, 4, 6)
WIDTH_FACTOR = 8


@dataclass(frozen=True)
class FFFRecord:
    d_model: int
    d_ff: int
    depth: int
    leaf_width: int
    tokens: int
    dense_ms: float
    fff_ms: float            # inference: one leaf per token
    fff_train_ms: float      # training-mode forward: the soft mixture of every leaf (no grad)
    ratio: float             # fff_ms / dense_ms
    train_ratio: float       # fff_train_ms / dense_ms
    flops_ratio: float       # fff inference FLOPs / dense FLOPs per token
    spread: float            # noise: relative IQR half-width of the fff/dense ratios

    def to_json(self) -> dict:
        return asdict(self)


def bench_fff(*, quick: bool, repeats: int, warmup: int = 1, seed: int = 0,
              on_round: Optional[Callable[[str], Callable[[int, int], None]]] = None) -> list[FFFRecord]:
    tokens = 1024 if quick else 4096
    records = []
    for d_model in D_MODELS:
        d_ff = WIDTH_FACTOR * d_model
        torch.manual_seed(seed)
        x = torch.randn(tokens, d_model)
        dense = MLP(d_model=d_model, d_ff=d_ff).eval()
        trees = {d: FastFeedForward(d_model=d_model, d_ff=d_ff, knobs=FFFKnobs(depth=d)).eval()
                 for d in DEPTHS}
        soft = {d: FastFeedForward(d_model=d_model, d_ff=d_ff, knobs=FFFKnobs(depth=d)).train()
                for d in DEPTHS}

        def call(module):
            def fn():
                with torch.no_grad():
                    module(x)
            return fn

        fns = {"dense": call(dense)}
        fns.update({f"fff{d}": call(t) for d, t in trees.items()})
        fns.update({f"soft{d}": call(t) for d, t in soft.items()})
        label = f"fff d_model={d_model} d_ff={d_ff} tokens={tokens}"
        times = interleaved(fns, repeats=repeats, warmup=warmup, seed=seed,
                            on_round=on_round(label) if on_round else None)
        dense_t = median(times["dense"])
        for d, tree in trees.items():
            ratios = [a / b for a, b in zip(times[f"fff{d}"], times["dense"])]
            records.append(FFFRecord(
                d_model=d_model, d_ff=d_ff, depth=d, leaf_width=tree.leaf_width, tokens=tokens,
                dense_ms=round(1e3 * dense_t, 3), fff_ms=round(1e3 * median(times[f"fff{d}"]), 3),
                fff_train_ms=round(1e3 * median(times[f"soft{d}"]), 3),
                ratio=round(median(times[f"fff{d}"]) / dense_t, 3),
                train_ratio=round(median(times[f"soft{d}"]) / dense_t, 3),
                flops_ratio=round(tree.flops_per_token() / dense.flops_per_token(), 4),
                spread=round(spread(ratios), 3)))
    return records


def print_fff(records: list[FFFRecord], out) -> None:
    print("fff at inference vs a dense FFN of the same total width (time ratio < 1: fff faster)",
          file=out)
    print(f"{'d_model':>7} {'d_ff':>5} {'depth':>5} {'leaf':>5} {'dense ms':>9} {'fff ms':>8} "
          f"{'ratio':>6} {'FLOPs':>6} {'soft ms':>8} {'soft ratio':>10} {'±':>5}", file=out)
    for r in records:
        print(f"{r.d_model:>7} {r.d_ff:>5} {r.depth:>5} {r.leaf_width:>5} {r.dense_ms:>9.2f} "
              f"{r.fff_ms:>8.2f} {r.ratio:>6.2f} {r.flops_ratio:>6.3f} {r.fff_train_ms:>8.2f} "
              f"{r.train_ratio:>10.2f} {r.spread:>5.2f}", file=out)
