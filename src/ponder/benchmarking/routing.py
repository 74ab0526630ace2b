"""Training cost of Mixture-of-Depths against the dense model: does routing save wall-clock?

One stacked model of ``layers`` blocks trained both ways (forward + backward of the loss,
no optimiser), timed interleaved in one run:

- ``dense``: every token runs every block (the reference path, ``execution: auto``);
- ``mod``:   the same model with the Mixture-of-Depths router on every other block at
  ``capacity`` (default 12.5%); ``execution: auto`` trains it compacted, so a routed block
  runs on its entering rows only (``CompactStepper._routed_keys_block``).

``ratio`` is the median of the per-round time ratios mod / dense (``paired_ratio``: a load
drift of the shared machine hits both candidates of a round alike). ``flops_ratio`` is the
ratio of the FLOPs per token the two models count (``ModelOutput.flops``: blocks entered
with the keys each token saw, the router, the head). ``efficiency = flops_ratio / ratio``
(1: the time saving equals the FLOPs saving); the target is ``ratio`` within 10% of
``flops_ratio``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

import ponder.models as models
from ponder.benchmarking.inference import paired_ratio, quartiles, round_ratios
from ponder.benchmarking.timing import interleaved, median
from ponder.models.config import ModelConfig, RouterConfig
from ponder.policies.fixed import Fixed

VOCAB = 16
TARGET = 0.10   # |ratio / flops_ratio − 1| within this is on target


@dataclass(frozen=True)
class RoutingConfig:
    d_model: int = 128
    seq: int = 256
    batch: int = 8
    layers: int = 12
    capacity: float = 0.125
    every: int = 2
    causal: bool = True


@dataclass
class RoutingRecord:
    model: str            # dense | mod
    d_model: int
    seq: int
    batch: int
    layers: int
    capacity: float       # 1.0 for dense
    every: int
    seconds: float        # median forward + backward
    flops_per_token: float
    ratio: float          # time, to dense (median of per-round ratios)
    ratio_q1: float
    ratio_q3: float
    flops_ratio: float    # FLOPs per token, to dense
    efficiency: float     # flops_ratio / ratio
    on_target: bool       # |ratio / flops_ratio − 1| ≤ TARGET

    def to_json(self) -> dict:
        return {"bench": "routing", **asdict(self)}


def build(config: RoutingConfig, routed: bool, seed: int = 0) -> torch.nn.Module:
    router = (RouterConfig(kind="mod", knobs={"capacity": config.capacity}, every=config.every)
              if routed else RouterConfig())
    cfg = ModelConfig(kind="stacked", d_model=config.d_model, n_heads=4, d_ff=4 * config.d_model,
                      prelude=0, core=1, coda=0, max_steps=config.layers, causal=config.causal,
                      positions="learned", max_len=max(512, config.seq), execution="auto",
                      router=router)
    torch.manual_seed(seed)
    return models.build(cfg, Fixed(), vocab_size=VOCAB).train()


def train_step(model, tokens: torch.Tensor, targets: torch.Tensor) -> Callable[[], float]:
    def fn() -> float:
        model.zero_grad(set_to_none=True)
        out = model(tokens)
        loss, _ = model.loss(out, targets)
        loss.backward()
        return float(out.flops.mean())
    return fn


def bench_routing(config: RoutingConfig, *, repeats: int, warmup: int = 1, seed: int = 0,
                  on_round: Optional[Callable[[int, int], None]] = None) -> list[RoutingRecord]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (config.batch, config.seq), generator=g)
    targets = torch.randint(0, VOCAB, (config.batch, config.seq), generator=g)
    flops: dict[str, float] = {}
    fns = {}
    for name, routed in (("dense", False), ("mod", True)):
        step = train_step(build(config, routed, seed), tokens, targets)

        def record(step=step, name=name) -> None:
            flops[name] = step()
        fns[name] = record
    times = interleaved(fns, repeats=repeats, warmup=warmup, seed=seed, on_round=on_round)
    records = []
    for name in ("dense", "mod"):
        ratio = paired_ratio(times[name], times["dense"])
        q1, q3 = quartiles(round_ratios(times[name], times["dense"]))
        f_ratio = flops[name] / flops["dense"]
        records.append(RoutingRecord(
            model=name, d_model=config.d_model, seq=config.seq, batch=config.batch,
            layers=config.layers, capacity=config.capacity if name == "mod" else 1.0,
            every=config.every, seconds=median(times[name]), flops_per_token=flops[name],
            ratio=ratio, ratio_q1=q1, ratio_q3=q3, flops_ratio=f_ratio,
            efficiency=f_ratio / ratio, on_target=abs(ratio / f_ratio - 1) <= TARGET))
    return records


def print_routing(records: list[RoutingRecord], out) -> None:
    r = records[-1]
    print(f"\nrouting: training step (forward + backward), stacked {r.layers} blocks, d_model="
          f"{r.d_model} seq={r.seq} batch={r.batch}; Mixture-of-Depths at capacity "
          f"{r.capacity:g} on every {r.every}{'nd' if r.every == 2 else 'th'} block vs dense", file=out)
    print(f"  {'model':<6} {'ms':>8} {'MFLOPs/token':>12} {'time ratio':>10} {'rounds IQR':>11} "
          f"{'FLOPs ratio':>11} {'efficiency':>10} {'on target':>9}", file=out)
    for r in records:
        print(f"  {r.model:<6} {r.seconds * 1e3:8.1f} {r.flops_per_token / 1e6:12.2f} {r.ratio:10.3f} "
              f"{r.ratio_q1:5.3f}-{r.ratio_q3:5.3f} {r.flops_ratio:11.3f} {r.efficiency:10.2f} "
              f"{'yes' if r.on_target else 'no':>9}", file=out)
