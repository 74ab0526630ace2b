"""Training cost: forward + backward of every halting policy against fixed depth.

Two questions:
- *bookkeeping*: what does a halting policy add to a training step of the same model when it
  runs the same steps? Each registered policy with its default knobs (halting heads start
  deep, so tokens run ~all N steps at initialisation) against the fixed-depth model that
  reads out the same way: ``fixed`` (all N steps, one readout at the end) for policies whose
  objective is the final readout, ``fixed+readouts`` (all N steps, a readout after every step
  and the mean of the per-step losses: deep supervision, no halting) for expected / per-exit
  objectives, which need every step's readout by definition. ``ratio`` is always to plain
  ``fixed`` (what the objective costs in all); ``bookkeeping`` to the matched baseline (what
  the halting adds).
- *compacted training*: a policy whose training decision is hard (tokens really stop in
  training: ACT, UT-ACT, stick-breaking) run with a halting bias that makes tokens stop
  early, ``dense`` against ``compact`` execution (same gradients, tested in
  ``tests/models/test_compact.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

import ponder.models as models
import ponder.policies as policies
from ponder.benchmarking.timing import interleaved, median, spread
from ponder.models.config import ModelConfig
from ponder.policies.fixed import Fixed
from ponder.policies.halting import masked_mean, scored_mask, step_ce

VOCAB = 16
# halting biases tried (in order) to make a hard-halting policy stop tokens in training after
# N/4 .. 3N/4 steps on average
EARLY_BIASES = (0.0, 1.0, 2.0, 3.0)


@dataclass
class TrainRecord:
    policy: str
    objective: str      # final | expected | per_step (the latter two read out every step)
    execution: str
    knobs: dict
    mean_steps: float
    seconds: float      # median forward + backward
    spread: float
    ratio: float        # to the fixed-depth model of the same size (dense)
    baseline: str = "fixed"     # the fixed-depth model that reads out the same way
    bookkeeping: float = 1.0    # ratio to that baseline
    instances: int = 1          # model instances timed (their rounds pooled)
    instance_spread: float = 0.0  # slowest / fastest instance median − 1 (the noise floor)

    def to_json(self) -> dict:
        return {"bench": "training", **asdict(self)}


@dataclass(frozen=True)
class TrainConfig:
    d_model: int = 128
    seq: int = 64
    batch: int = 32
    max_steps: int = 8


# Separate model instances of one configuration differ in speed by several % on this kind of
# machine (where their tensors land in memory): every case is timed on this many instances,
# the baselines on more, and their rounds are pooled.
INSTANCES = 2
BASELINE_INSTANCES = 3
READOUTS = "fixed+readouts"


class FixedWithReadouts(Fixed):
    """The baseline of expected / per-exit objectives: every token runs all N steps, the
    model reads out after every step, and the loss is the mean of the per-step losses (deep
    supervision) — the readout cost of those objectives without any halting. Not registered."""

    name = READOUTS
    objective = "per_step"

    def loss(self, out, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if out.step_logits is None:
            return super().loss(out, targets)
        return masked_mean(step_ce(out.step_logits, targets).mean(-1), scored_mask(targets)), {}


def baseline_for(objective: str) -> str:
    return "fixed" if objective == "final" else READOUTS


def model_for(policy: str, knobs: dict, config: TrainConfig, execution: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind="recurrent", d_model=config.d_model, n_heads=4, d_ff=4 * config.d_model,
                      prelude=1, core=1, coda=1, max_steps=config.max_steps, positions="learned",
                      execution=execution)
    policy_obj = FixedWithReadouts() if policy == READOUTS else policies.get(policy, **knobs)
    return models.build(cfg, policy_obj, vocab_size=VOCAB).train()


def train_step(model, tokens: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> Callable[[], float]:
    def fn() -> float:
        model.zero_grad(set_to_none=True)
        out = model(tokens, mask)
        loss, _ = model.loss(out, targets)
        loss.backward()
        return float(out.steps[mask].float().mean())
    return fn


def hard_in_training(policy: str, config: TrainConfig, batch: tuple) -> Optional[dict]:
    """Knobs with which ``policy`` stops tokens early in training, or None if it never does."""
    fields = {f.name for f in policies.policy_class(policy).knob_fields()}
    if "halt_bias" not in fields:
        return None
    tokens, mask, _ = batch
    for bias in EARLY_BIASES:
        knobs = {"halt_bias": bias}
        model = model_for(policy, knobs, config, "dense")
        with torch.no_grad():
            steps = float(model(tokens, mask).steps[mask].float().mean())
        if config.max_steps / 4 <= steps <= 3 * config.max_steps / 4:
            return knobs
    return None


def bench_training(config: TrainConfig, *, repeats: int, warmup: int, seed: int = 0,
                   names: Optional[list[str]] = None,
                   on_round: Optional[Callable[[int, int], None]] = None) -> list[TrainRecord]:
    g = torch.Generator().manual_seed(seed)
    shape = (config.batch, config.seq)
    tokens = torch.randint(0, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.bool)
    targets = torch.randint(0, VOCAB, shape, generator=g)
    batch = (tokens, mask, targets)
    names = [n for n in (names or policies.names())]
    cases: dict[str, tuple[str, str, dict]] = {"fixed": ("fixed", "dense", {}),
                                               READOUTS: (READOUTS, "dense", {})}
    for name in names:
        if name == "fixed":
            continue
        cases[f"{name}:dense"] = (name, "dense", {})
        knobs = hard_in_training(name, config, batch)
        if knobs is not None:
            cases[f"{name}:early:dense"] = (name, "dense", knobs)
            cases[f"{name}:early:compact"] = (name, "compact", knobs)
    steps: dict[str, float] = {}
    fns = {}
    count = {key: BASELINE_INSTANCES if key in ("fixed", READOUTS) else INSTANCES for key in cases}
    for key, (name, execution, knobs) in cases.items():
        for i in range(count[key]):
            fn = train_step(model_for(name, knobs, config, execution, seed), *batch)

            def record(fn=fn, key=key) -> None:
                steps[key] = fn()
            fns[f"{key}#{i}"] = record
    times = interleaved(fns, repeats=repeats, warmup=warmup, seed=seed, on_round=on_round)
    pooled = {key: [t for i in range(count[key]) for t in times[f"{key}#{i}"]] for key in cases}
    med = {key: median(pooled[key]) for key in cases}
    records = []
    for key, (name, execution, knobs) in cases.items():
        objective = FixedWithReadouts.objective if name == READOUTS else policies.policy_class(name).objective
        base = baseline_for(objective)  # the baselines are their own
        records.append(TrainRecord(policy=name, objective=objective, execution=execution, knobs=knobs,
                                   mean_steps=steps[key], seconds=med[key], spread=spread(pooled[key]),
                                   ratio=med[key] / med["fixed"], baseline=base,
                                   bookkeeping=med[key] / med[base], instances=count[key],
                                   instance_spread=_instance_spread([times[f"{key}#{i}"] for i in range(count[key])])))
    return records


def _instance_spread(per_instance: list[list[float]]) -> float:
    """(slowest / fastest) − 1 among the medians of separate instances of one case."""
    meds = [median(t) for t in per_instance]
    return max(meds) / min(meds) - 1
