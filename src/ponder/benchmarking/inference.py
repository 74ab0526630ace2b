"""Inference wall-clock: does time follow the compute the policy allocated?

For one configuration (width, length, batch, T_max) and per-token halting depths drawn with
a given mean (a :class:`~ponder.policies.scripted.ScriptedPolicy` plays them back), three
implementations run the same recurrent model — one shared pre-norm block, no prelude/coda —
interleaved in one run:

- ``full``: every token runs all T_max steps, a plain loop of the block (no masks at all):
  the cost of computing everything, the denominator of every ratio;
- ``masked``: the dense engine at those depths (every token computed at every step, halted
  ones masked with ``torch.where``: what public implementations do);
- ``compact``: the compacted engine (``ponder.models.compact``).

ratio = median over the rounds of time / the same round's time of ``full``; ideal = mean
depth / T_max (time exactly proportional to the token-steps computed); efficiency = ideal /
ratio.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional

import torch

import ponder.models as models
from ponder.benchmarking.timing import interleaved, median, spread
from ponder.models.config import ModelConfig
from ponder.models.dispatch import run_group
from ponder.models.layers import AttnContext
from ponder.policies.scripted import ScriptedPolicy

IMPLS = ("full", "masked", "compact")
FRACTIONS = (0.25, 0.5, 0.75)
VOCAB = 16


@dataclass(frozen=True)
class Config:
    d_model: int
    seq: int
    batch: int
    max_steps: int = 12
    kind: str = "recurrent"   # recurrent (one shared block) | stacked (T_max distinct layers)


@dataclass
class Record:
    impl: str
    kind: str
    d_model: int
    seq: int
    batch: int
    max_steps: int
    profile: str          # "0.25" / "0.5" / "0.75" of T_max, or "run"
    mean_depth: float
    seconds: float        # median of the timed rounds
    spread: float         # relative half inter-quartile range of the rounds
    ratio: float
    ideal: float
    efficiency: float
    efficiency_q1: float  # quartiles of the per-round efficiencies (ideal / that round's
    efficiency_q3: float  # ratio): how far the machine's drift moves this figure
    cpu_seconds: float    # median process CPU time of the same rounds
    cpu_ratio: float
    cpu_efficiency: float

    def to_json(self) -> dict:
        return asdict(self)


def grid(quick: bool, kind: str = "recurrent") -> list[Config]:
    """The measured grid: d_model ∈ {128, 256} × seq ∈ {64, 256}, batch 32–128 tokens-balanced."""
    if quick:
        return [Config(d_model=d, seq=s, batch=b, kind=kind) for d in (128, 256) for s, b in ((64, 32), (256, 8))]
    return [Config(d_model=d, seq=s, batch=b, kind=kind) for d in (128, 256) for s, b in ((64, 128), (256, 32))]


def drawn_depths(shape: tuple[int, int], mean: float, max_steps: int, seed: int) -> torch.Tensor:
    """[B, L] long depths in 1..T_max with the given mean, drawn per token (seeded):
    1 + Binomial(T_max − 1, (mean − 1)/(T_max − 1))."""
    g = torch.Generator().manual_seed(seed)
    p = (mean - 1) / (max_steps - 1)
    u = torch.rand(*shape, max_steps - 1, generator=g)
    return 1 + (u < p).sum(-1)


def tiled_depths(sequences: list[torch.Tensor], shape: tuple[int, int], seed: int) -> torch.Tensor:
    """[B, L] depths made of real per-sequence depth vectors (concatenated in a seeded random
    order until each row is full), so within-sequence structure is kept."""
    g = torch.Generator().manual_seed(seed)
    B, L = shape
    rows = []
    for _ in range(B):
        parts, n = [], 0
        while n < L:
            s = sequences[int(torch.randint(len(sequences), (1,), generator=g))]
            parts.append(s)
            n += len(s)
        rows.append(torch.cat(parts)[:L])
    return torch.stack(rows).long()


def build_model(config: Config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=config.kind, d_model=config.d_model, n_heads=4, d_ff=4 * config.d_model,
                      prelude=0, core=1, coda=0, max_steps=config.max_steps, positions="learned",
                      max_len=max(512, config.seq), execution="dense")
    return models.build(cfg, ScriptedPolicy(steps=config.max_steps), vocab_size=VOCAB).eval()


def full_depth(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every token through all T_max steps, no masks: the plain fixed-depth loop → logits."""
    ctx = AttnContext.build(mask, causal=model.cfg.causal, rope=model.rotary)
    if not model.cfg.causal and bool(mask.all()):
        ctx.attn_mask = None  # nothing to mask: the unmasked attention kernel, the fastest
    # attention through the same dispatcher (compiled kernels) as the compacted engine, so the
    # two compare kernel for kernel
    h = run_group(model.prelude, model.embed(tokens), ctx)
    for n in range(1, model.cfg.max_steps + 1):
        e = model.step_vector(n)
        if e is not None:
            h = h + e
        h = run_group(model.core_group(n), h, ctx)
    return model.readout.head(model.readout.norm(run_group(model.readout.coda, h, ctx)))


def candidates(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor,
               profiles: dict[str, torch.Tensor]) -> dict[tuple[str, str], Callable[[], object]]:
    """(impl, profile) → a zero-argument forward pass (under inference mode)."""

    def run(execution: str, depths: torch.Tensor) -> Callable[[], object]:
        def fn() -> object:
            model.cfg.execution = execution
            model.policy.steps = depths
            with torch.inference_mode():
                return model(tokens, mask)
        return fn

    def full() -> object:
        with torch.inference_mode():
            return full_depth(model, tokens, mask)

    fns: dict[tuple[str, str], Callable[[], object]] = {("full", "full"): full}
    for name, depths in profiles.items():
        fns[("masked", name)] = run("dense", depths)
        fns[("compact", name)] = run("compact", depths)
    return fns


def bench_config(config: Config, *, repeats: int, warmup: int, seed: int = 0,
                 run_depths: Optional[list[torch.Tensor]] = None,
                 fractions: Iterable[float] = FRACTIONS,
                 on_round: Optional[Callable[[int, int], None]] = None) -> list[Record]:
    """Time one configuration; → one record per (impl, profile) (``full`` has ratio 1)."""
    shape = (config.batch, config.seq)
    profiles = {f"{f:g}": drawn_depths(shape, f * config.max_steps, config.max_steps, seed + i)
                for i, f in enumerate(fractions)}
    if run_depths is not None:
        profiles["run"] = tiled_depths(run_depths, shape, seed).clamp(1, config.max_steps)
    model = build_model(config, seed)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.bool)
    fns = candidates(model, tokens, mask, profiles)
    cpu: dict[str, list[float]] = {}
    times = interleaved({f"{k[0]}:{k[1]}": f for k, f in fns.items()}, repeats=repeats,
                        warmup=warmup, seed=seed, on_round=on_round, cpu=cpu)
    records = []
    for (impl, profile) in fns:
        t, c = times[f"{impl}:{profile}"], cpu[f"{impl}:{profile}"]
        depth = float(config.max_steps) if profile == "full" else float(profiles[profile].float().mean())
        ideal = depth / config.max_steps
        ratio = paired_ratio(t, times["full:full"])
        q1, q3 = quartiles([ideal / r for r in round_ratios(t, times["full:full"])])
        cpu_ratio = paired_ratio(c, cpu["full:full"])
        records.append(Record(impl=impl, kind=config.kind, d_model=config.d_model, seq=config.seq, batch=config.batch,
                              max_steps=config.max_steps, profile=profile, mean_depth=depth,
                              seconds=median(t), spread=spread(t), ratio=ratio, ideal=ideal,
                              efficiency=ideal / ratio, efficiency_q1=q1, efficiency_q3=q3,
                              cpu_seconds=median(c), cpu_ratio=cpu_ratio,
                              cpu_efficiency=ideal / cpu_ratio))
    return records


def paired_ratio(times: list[float], full: list[float]) -> float:
    """Median over the rounds of time / the same round's full-depth time.

    Every round runs each candidate once, so a round's ratio cancels the machine's drifts
    slower than a round (other processes, memory reclaim). Measured on this kind of machine
    (three identical candidates, 15 rounds, twice): the ratio of the medians put them 0.79–0.93
    apart in efficiency, the median of the per-round ratios 0.81–0.87 — and the bench reports
    the *minimum* over 12 configurations, which noise drags down."""
    return median(round_ratios(times, full))


def round_ratios(times: list[float], full: list[float]) -> list[float]:
    """Each round's time / the same round's full-depth time."""
    if len(times) != len(full):
        raise ValueError(f"{len(times)} rounds against {len(full)} of full depth")
    return [t / f for t, f in zip(times, full)]


def quartiles(values: list[float]) -> tuple[float, float]:
    """(first, third) quartile, inclusive method (a single value: itself twice)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def run_depth_vectors(run_dir: str, *, n: int = 256, batch_size: int = 64) -> tuple[list[torch.Tensor], int]:
    """Per-sequence depth vectors a trained run's model really produces on its valid split
    (real tokens only), and its max_steps."""
    from ponder.eval.evaluate import load_run
    from ponder.tasks import collate

    run = load_run(run_dir)
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            examples = [run.task.example("valid", i) for i in range(start, min(n, start + batch_size))]
            batch = collate(examples, run.vocab)
            steps = run.model(batch.tokens, batch.mask).steps
            out += [steps[b][batch.mask[b]].clone() for b in range(len(examples))]
    return out, int(run.cfg.model.max_steps)
