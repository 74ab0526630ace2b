"""Size sweep (``ponder eval RUN_DIR --sweep KNOB=LO..HI[:STEP]``): records per size.

For each size s in ``LO, LO+STEP, ..., HI`` the run is scored on examples ``0..n-1`` of the
run's task with the size knob ``KNOB`` pinned to s (:meth:`ponder.tasks.base.Task.at_size`):
the training distribution in every other knob, so only the size changes along the sweep.
Examples are seeded by (task config, size, index), the same on every machine. Sizes inside
the training range are drawn as the test split is (disjoint from train by the input hash);
beyond it every draw is accepted (no train example has that size).

``KNOB`` is a size name the task declares in ``Task.size_knobs`` (``list_rank``: ``m``;
``parity``: ``n``, ``k``; ``flipflop``: ``n`` ...; ``ponder tasks show NAME`` lists the
knobs). Every size must lie in the bounds of that size's min/max knobs, be drawable, and
produce only tokens of the run's vocabulary (and fit learned positions): all examples are
drawn and checked before anything is scored, so bad input writes nothing.

Files (each atomic; the sweep directory of a knob is replaced as a whole):

    RUN_DIR/eval/sweep/<KNOB>.json          index: spec, sizes, training / ood range, step
    RUN_DIR/eval/sweep/<KNOB>/<s>.parquet   per-token records (schema: ponder.eval.records,
                                            split = "sweep")
    RUN_DIR/eval/sweep/<KNOB>/<s>.json      the size's summary (as eval/<split>.json, + size)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ponder.errors import ConfigError
from ponder.eval.evaluate import (EVAL_DIR, LoadedRun, evaluate_split, load_run, run_metadata,
                                  train_label_set)
from ponder.eval.writer import write_records
from ponder.tasks import Vocab
from ponder.tasks.base import Example
from ponder.train.checkpoint import atomic_write_text

SWEEP_DIR = "sweep"
SWEEP_SPLIT = "sweep"  # the records' ``split`` column
MAX_SIZES = 1000
_SPEC = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(-?\d+)\.\.(-?\d+)(?::(-?\d+))?$")


@dataclass(frozen=True)
class SweepSpec:
    knob: str
    lo: int
    hi: int
    step: int = 1

    @property
    def sizes(self) -> list[int]:
        return list(range(self.lo, self.hi + 1, self.step))

    def __str__(self) -> str:
        return f"{self.knob}={self.lo}..{self.hi}" + (f":{self.step}" if self.step != 1 else "")


def parse_spec(text: str) -> SweepSpec:
    """``KNOB=LO..HI`` or ``KNOB=LO..HI:STEP`` (integers, LO <= HI, STEP >= 1)."""
    m = _SPEC.match(text.strip())
    if m is None:
        raise ConfigError(f"--sweep {text!r}: expected KNOB=LO..HI[:STEP], e.g. m=4..40 or n=8..64:8")
    knob, lo, hi, step = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4) or 1)
    if lo > hi:
        raise ConfigError(f"--sweep {text!r}: LO must be <= HI")
    if step < 1:
        raise ConfigError(f"--sweep {text!r}: STEP must be >= 1")
    spec = SweepSpec(knob, lo, hi, step)
    if len(spec.sizes) > MAX_SIZES:
        raise ConfigError(f"--sweep {text!r}: {len(spec.sizes)} sizes; at most {MAX_SIZES}")
    return spec


def size_ranges(task, knob: str) -> dict[str, Any]:
    """The knob's bounds (both of its min/max knobs' ``[lo, hi]``), its training range, and
    its ood range when the family names it ``ood_<min knob>`` / ``ood_<max knob>``."""
    size_knobs = getattr(task, "size_knobs", None) or {}
    if knob not in size_knobs:
        raise ConfigError(f"task {task.name!r} has no size knob {knob!r}; size knobs: "
                          f"{', '.join(size_knobs) or 'none'}")
    lo_name, hi_name = size_knobs[knob]
    fields = {f.name: f for f in dataclasses.fields(task.config)}
    bounds_lo = max(fields[n].metadata.get("lo") or 0 for n in (lo_name, hi_name))
    his = [fields[n].metadata.get("hi") for n in (lo_name, hi_name)]
    bounds_hi = min(h for h in his if h is not None) if any(h is not None for h in his) else None
    values = dataclasses.asdict(task.config)
    ood = None
    if f"ood_{lo_name}" in values and f"ood_{hi_name}" in values:
        ood = [values[f"ood_{lo_name}"], values[f"ood_{hi_name}"]]
    return {"bounds": [bounds_lo, bounds_hi], "knobs": [lo_name, hi_name],
            "train_range": [values[lo_name], values[hi_name]], "ood_range": ood}


@dataclass
class SweepPlan:
    spec: SweepSpec
    ranges: dict[str, Any]
    examples: dict[int, list[Example]]  # size -> examples 0..n-1


def _check_encodable(ex: Example, vocab: Vocab, max_len: int | None, where: str) -> None:
    for tok in list(ex.input) + [t for t in ex.target if t is not None]:
        if tok not in vocab.stoi:
            raise ConfigError(f"{where}: token {tok!r} is not in the run's vocabulary "
                              "(the size lies beyond what the task's config can express)")
    if max_len is not None and len(ex.input) > max_len:
        raise ConfigError(f"{where}: {len(ex.input)} tokens exceed the model's learned "
                          f"positions (model.max_len={max_len})")


def plan_sweep(run: LoadedRun, spec: SweepSpec, *, n: int) -> SweepPlan:
    """Validate ``spec`` against the run's task and draw every example (nothing written)."""
    task = run.task
    if not hasattr(task, "at_size"):
        raise ConfigError(f"--sweep: the run's task {getattr(task, 'name', task)!r} cannot pin sizes")
    ranges = size_ranges(task, spec.knob)
    lo, hi = ranges["bounds"]
    if spec.lo < lo or (hi is not None and spec.hi > hi):
        raise ConfigError(f"--sweep {spec}: {task.name}'s size {spec.knob} must lie in [{lo}, {hi}]")
    train_lo, train_hi = ranges["train_range"]
    m = run.cfg.model
    max_len = m.max_len if m.positions == "learned" else None
    examples: dict[int, list[Example]] = {}
    for size in spec.sizes:
        pinned = task.at_size(spec.knob, size)
        # in the training range draw as the test split (disjoint from train); beyond, as ood
        # (every draw accepted): the pinned task draws the training distribution either way
        split = "test" if train_lo <= size <= train_hi else "ood"
        where = f"--sweep {spec}: size {size}"
        drawn = []
        for i in range(n):
            try:
                ex = pinned.example(split, i)
            except (ValueError, IndexError, ConfigError) as exc:
                raise ConfigError(f"{where}: {task.name} cannot draw an example ({exc})") from None
            _check_encodable(ex, run.vocab, max_len, where)
            drawn.append(ex)
        examples[size] = drawn
    return SweepPlan(spec, ranges, examples)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap ``tmp`` in for ``final`` (a directory): readers see the old sweep or the new one."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_sweep(run: LoadedRun, run_dir: Path, plan: SweepPlan, *, batch_size: int,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score every size of ``plan``; write the files of the module docstring. Returns the index."""
    spec = plan.spec
    labels = train_label_set(run.task)
    meta = run_metadata(run.cfg, run.step) | {"sweep": str(spec)}
    sweep_dir = run_dir / EVAL_DIR / SWEEP_DIR
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=sweep_dir, prefix=f".{spec.knob}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)
    train_lo, train_hi = plan.ranges["train_range"]
    ood = plan.ranges["ood_range"]
    try:
        for size, examples in plan.examples.items():
            cols, summary = evaluate_split(run, SWEEP_SPLIT, n=len(examples), batch_size=batch_size,
                                           labels=labels, examples=examples)
            summary = {"knob": spec.knob, "size": size, "in_train_range": train_lo <= size <= train_hi,
                       "in_ood_range": bool(ood and ood[0] <= size <= ood[1]),
                       "checkpoint_step": run.step, **summary}
            write_records(tmp / f"{size}.parquet", cols, meta | {"sweep_size": size})
            atomic_write_text(tmp / f"{size}.json", json.dumps(summary, indent=1))
            if log:
                log(f"{spec.knob}={size}: token acc {summary['token_acc']:.4f}, seq acc "
                    f"{summary['seq_acc']:.4f}, mean steps {summary['mean_steps']:.2f} of "
                    f"{summary['max_steps']}" + (" (train range)" if summary["in_train_range"] else ""))
        _replace_dir(tmp, sweep_dir / spec.knob)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    index = {"knob": spec.knob, "spec": str(spec), "sizes": spec.sizes, "n": len(next(iter(plan.examples.values()))),
             "checkpoint_step": run.step, "task": run.task.name, **plan.ranges}
    atomic_write_text(sweep_dir / f"{spec.knob}.json", json.dumps(index, indent=1))
    if log:
        log(f"wrote {sweep_dir / spec.knob}/ ({len(spec.sizes)} sizes)")
    return index


def sweep_run(run_dir: Path | str, specs: Sequence[str], *, n: int, batch_size: int | None = None,
              threads: int | None = None,
              model_factory: Callable[..., torch.nn.Module] | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Parse and plan every sweep (bad input → ConfigError, nothing written), then run them."""
    parsed = [parse_spec(s) for s in specs]
    if len({p.knob for p in parsed}) < len(parsed):
        raise ConfigError("--sweep: each knob may be swept once per call")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    run_dir = Path(run_dir)
    run = load_run(run_dir, model_factory)
    torch.set_num_threads(threads or run.cfg.run.threads)
    plans = [plan_sweep(run, spec, n=n) for spec in parsed]
    bs = batch_size or max(run.cfg.run.batch_size, 256)
    return {plan.spec.knob: run_sweep(run, run_dir, plan, batch_size=bs, log=log) for plan in plans}
