"""Executors: where the runs of a study (``ponder reproduce anira``) go.

A run is a :class:`Work` (a picklable description: config, overrides, run directory); an
executor maps a function over them and returns one :class:`Outcome` per work, in the order
given. A run that raises, or whose worker dies, is an Outcome with ``failed_at`` set, never
an exception of the executor: one bad run must not lose the others.

* ``SerialExecutor`` — in this process, one after the other (``--jobs 1``);
* ``PoolExecutor`` — a local process pool (``--jobs N``, the default executor); workers are
  started with ``spawn`` (a forked child of a process that has run torch threads can hang);
* ``RayExecutor`` — Ray tasks (``--executor ray [--address HOST:PORT]``): a cluster's head
  node, or a local Ray instance when no address is given. Ray is the optional extra
  ``ponder[ray]``; the runs' directories must be on storage the workers share.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

from ponder.errors import ConfigError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Work:
    """One run: train ``config`` (+ ``overrides``) into ``run_dir``, evaluate ``valid`` and
    ``ood`` on ``n`` examples each, analyse."""

    name: str
    config: str
    overrides: tuple[str, ...]
    run_dir: str
    n: int
    threads: int
    key: str = ""     # what the run's result depends on (resolved config, n): a study's ledger
                      # reuses a finished run only while its key is the same


@dataclass
class Outcome:
    name: str
    failed_at: Optional[str] = None     # stage that failed: train | eval | analyze | executor
    error: Optional[str] = None
    wall_s: float = 0.0
    steps: Optional[int] = None
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_at is None


def run_work(work: Work) -> Outcome:
    """train → eval → analyze in the calling process; an exception becomes a failed Outcome."""
    import torch

    from ponder.analysis import analyze_run
    from ponder.eval import evaluate_run
    from ponder.train import load_config, train

    t0 = time.perf_counter()
    torch.set_num_threads(work.threads)
    out = Outcome(work.name)
    stage = "train"
    say = lambda line: print(f"[{work.name}] {line}", flush=True)  # noqa: E731
    try:
        result = train(load_config(work.config, list(work.overrides)), work.run_dir,
                       progress="plain", label=f"[{work.name}]")
        out.steps = result.step
        say(f"stopped at step {result.step} ({result.reason}) after {result.train_s:.1f}s")
        stage = "eval"
        evaluate_run(work.run_dir, ("valid", "ood"), n=work.n, threads=work.threads, log=say)
        stage = "analyze"
        analyze_run(work.run_dir)
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the rest
        out.failed_at, out.error = stage, f"{type(exc).__name__}: {exc}"
        out.log = traceback.format_exc().splitlines()[-5:]
        say(f"{stage} FAILED: {out.error}")
    out.wall_s = time.perf_counter() - t0
    return out


Fn = Callable[[Work], Outcome]
Done = Callable[[Outcome], None]


class Executor(Protocol):
    def map(self, fn: Fn, works: Sequence[Work], on_done: Optional[Done] = None) -> list[Outcome]:
        """``fn`` over ``works``; one Outcome per work, in the given order."""
        ...


def _failed(work: Work, exc: BaseException) -> Outcome:
    return Outcome(work.name, failed_at="executor", error=f"{type(exc).__name__}: {exc}")


class SerialExecutor:
    def map(self, fn: Fn, works: Sequence[Work], on_done: Optional[Done] = None) -> list[Outcome]:
        outcomes = []
        for work in works:
            try:
                outcome = fn(work)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - fn is meant to catch; be safe anyway
                outcome = _failed(work, exc)
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
        return outcomes


class PoolExecutor:
    """A local pool of ``jobs`` worker processes."""

    def __init__(self, *, jobs: int) -> None:
        self.jobs = jobs

    def map(self, fn: Fn, works: Sequence[Work], on_done: Optional[Done] = None) -> list[Outcome]:
        results: dict[int, Outcome] = {}
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(fn, work): i for i, work in enumerate(works)}
            try:
                for future in cf.as_completed(futures):
                    i = futures[future]
                    try:
                        results[i] = future.result()
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # noqa: BLE001 - a dead worker (BrokenProcessPool: every
                        # run still queued is reported too), an exception or SystemExit of fn
                        results[i] = _failed(works[i], exc)
                    if on_done:
                        on_done(results[i])
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                raise
        return [results[i] for i in range(len(works))]


class RayExecutor:
    """Ray tasks, one CPU-``threads`` task per work. ``address``: a running cluster
    (``ray start --head`` → HOST:PORT, or ``auto``); None starts a local Ray instance."""

    def __init__(self, *, address: Optional[str], num_cpus: Optional[int] = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs ray: pip install 'ponder[ray]'") from None
        self.address, self.num_cpus = address, num_cpus

    def map(self, fn: Fn, works: Sequence[Work], on_done: Optional[Done] = None) -> list[Outcome]:
        import ray

        started = not ray.is_initialized()
        if started:
            kwargs = {"address": self.address} if self.address else {"num_cpus": self.num_cpus}
            ray.init(include_dashboard=False, log_to_driver=True, **kwargs)
        try:
            remote = ray.remote(fn)
            refs = {remote.options(num_cpus=max(1, w.threads)).remote(w): i for i, w in enumerate(works)}
            results: dict[int, Outcome] = {}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = refs[ready[0]]
                try:
                    results[i] = ray.get(ready[0])
                except Exception as exc:  # noqa: BLE001 - a task or worker error of Ray's
                    results[i] = _failed(works[i], exc)
                if on_done:
                    on_done(results[i])
            return [results[i] for i in range(len(works))]
        finally:
            if started:
                ray.shutdown()


def make_executor(kind: str, *, jobs: int, threads: int = 1, address: Optional[str] = None) -> Executor:
    """``jobs`` runs at a time of ``threads`` threads each (a local Ray instance gets
    ``jobs × threads`` CPUs; a cluster's own CPU count decides there)."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")
    if address is not None and kind != "ray":
        raise ConfigError("--address is for --executor ray")
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=None if address else jobs * threads)
    return SerialExecutor() if jobs == 1 else PoolExecutor(jobs=jobs)
