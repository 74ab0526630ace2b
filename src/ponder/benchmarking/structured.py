"""``ponder bench --part ffn`` (second table): the structured FFN kinds against the dense FFN
they match in parameters (and so in FLOPs per token).

For d_model ∈ {128, 256} with d_ff = 4·d_model and ``tokens`` rows (4,096; ``--quick``:
1,024), times the forward of ``dense``, ``lowrank``, ``monarch`` and ``btt`` (default knobs;
their hidden width is solved to match the dense FFN's parameters) in eval mode under
``torch.no_grad`` in float32, and the forward + backward in training mode, interleaved in one
run. A ratio > 1 means the structured kind is slower than dense at the same parameters:
its wider hidden layer and small block matmuls cost wall-clock time that FLOPs do not show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from ponder.benchmarking.timing import interleaved, median
from ponder.models.kinds import FFNS

D_MODELS = (128, 256)
KINDS = ("lowrank", "monarch", "btt")
WIDTH_FACTOR = 4


@dataclass(frozen=True)
class StructuredRecord:
    kind: str
    d_model: int
    d_ff: int
    width: int               # the structured kind's hidden width at matched parameters
    params_ratio: float      # its parameters / dense's
    flops_ratio: float       # its FLOPs per token / dense's
    tokens: int
    dense_ms: float
    kind_ms: float           # inference forward
    ratio: float             # kind_ms / dense_ms
    train_ratio: float       # forward + backward, kind / dense

    def to_json(self) -> dict:
        return asdict(self)


def bench_structured(*, quick: bool, repeats: int, warmup: int = 1, seed: int = 0,
                     on_round: Optional[Callable[[str], Callable[[int, int], None]]] = None
                     ) -> list[StructuredRecord]:
    tokens = 1024 if quick else 4096
    records = []
    for d_model in D_MODELS:
        d_ff = WIDTH_FACTOR * d_model
        torch.manual_seed(seed)
        x = torch.randn(tokens, d_model)
        mods = {k: FFNS.cls(k)(d_model=d_model, d_ff=d_ff, knobs=FFNS.knobs(k, {}))
                for k in ("dense",) + KINDS}

        def infer(m):
            def fn():
                m.eval()
                with torch.no_grad():
                    m(x)
            return fn

        def train(m):
            def fn():
                m.train()
                m(x).sum().backward()
            return fn

        fns = {f"{k}/infer": infer(m) for k, m in mods.items()}
        fns.update({f"{k}/train": train(m) for k, m in mods.items()})
        label = f"structured d_model={d_model} d_ff={d_ff} tokens={tokens}"
        times = interleaved(fns, repeats=repeats, warmup=warmup, seed=seed,
                            on_round=on_round(label) if on_round else None)
        dense = mods["dense"]
        n_dense = sum(p.numel() for p in dense.parameters())
        t_dense, t_dense_train = median(times["dense/infer"]), median(times["dense/train"])
        for k in KINDS:
            m = mods[k]
            records.append(StructuredRecord(
                kind=k, d_model=d_model, d_ff=d_ff, width=m.width,
                params_ratio=round(sum(p.numel() for p in m.parameters()) / n_dense, 4),
                flops_ratio=round(m.flops_per_token() / dense.flops_per_token(), 4), tokens=tokens,
                dense_ms=round(1e3 * t_dense, 3), kind_ms=round(1e3 * median(times[f"{k}/infer"]), 3),
                ratio=round(median(times[f"{k}/infer"]) / t_dense, 3),
                train_ratio=round(median(times[f"{k}/train"]) / t_dense_train, 3)))
    return records


def print_structured(records: list[StructuredRecord], out) -> None:
    print("structured FFNs vs the dense FFN of the same parameters (time ratio > 1: slower)", file=out)
    print(f"{'kind':>8} {'d_model':>7} {'d_ff':>5} {'width':>6} {'params':>6} {'FLOPs':>6} "
          f"{'dense ms':>9} {'kind ms':>8} {'ratio':>6} {'train ratio':>11}", file=out)
    for r in records:
        print(f"{r.kind:>8} {r.d_model:>7} {r.d_ff:>5} {r.width:>6} {r.params_ratio:>6.3f} "
              f"{r.flops_ratio:>6.3f} {r.dense_ms:>9.2f} {r.kind_ms:>8.2f} {r.ratio:>6.2f} "
              f"{r.train_ratio:>11.2f}", file=out)
