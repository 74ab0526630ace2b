"""``ponder reproduce EXPERIMENT [--out DIR] [--steps N] [--only NAME ...]``.

``anira`` (every task × policy × seed, the paper's three findings) lives in
``ponder.apps.anira``; the rest of this docstring is about ``parity``.

Re-measures a published claim on this machine. ``parity``: a fixed-depth Transformer, a
Universal Transformer (``ut_act``), PonderNet, ANIRA-O and AdaTape on ``parity``
(``configs/parity_<name>.yaml``). Each model trains up to its config's step cap
(``run.steps``; ``--steps`` replaces it for every run), stopping early at valid accuracy
``STOP_AT_ACC``: the results do not depend on the machine's load (wall-clock time is
reported, never used to stop a run). Each is then evaluated on ``valid`` and
``ood``, analysed (``ponder analyze``); then one HTML report of all runs and a results
table (``docs/results/<experiment>.md``, with the command and the machine; with ``--only``
a subset goes to ``OUT/<experiment>.md`` unless ``--doc`` says otherwise) are written.

Runs go ``--jobs`` at a time, each in its own processes with ``--threads`` torch threads
(train → eval → analyze), their progress lines passed through as they come, prefixed with
the run's name (``--jobs 1`` runs everything in this process). Text below a
``<!-- notes -->`` line of an existing results file is kept when the file is rewritten
(the hand-written notes on what was tried).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ponder.errors import ConfigError

# experiment → (run name, one-line description); the config is configs/<experiment>_<name>.yaml
EXPERIMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    # Queue order: the runs likely to stop early first, so that the parallel slots stay busy.
    "parity": (
        ("adatape", "AdaTape, 2 layers, input-driven bank (compute = tape tokens read)"),
        ("pondernet", "PonderNet, shared core ≤ 8 steps"),
        ("anira_o", "ANIRA-O, shared core ≤ 8 steps, online halting"),
        ("transformer", "Transformer, 4 layers, fixed depth"),
        ("ut", "Universal Transformer, shared core ≤ 8 steps, UT-ACT"),
    ),
}
STOP_AT_ACC = 0.995
NOTES_MARK = "<!-- notes -->"
REPO = Path(__file__).resolve().parents[3]  # the checkout, when run from one (for the commit)


@dataclass
class Job:
    name: str
    description: str
    config: Path
    run_dir: Path
    overrides: list[str]
    log: list[str] = field(default_factory=list)
    returncode: Optional[int] = None
    failed_at: Optional[str] = None
    wall_s: float = 0.0


def _steps(value: Optional[int]) -> Optional[int]:
    if value is not None and value < 1:
        raise ConfigError(f"--steps must be >= 1, got {value}")
    return value


def plan(args: argparse.Namespace) -> list[Job]:
    """Check the arguments and every config (no training yet); one Job per run."""
    from ponder.train import configs_dir, load_config, validate_names

    if args.experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {args.experiment!r}; choose from "
                          f"{', '.join([*EXPERIMENTS, 'anira'])}")
    runs = EXPERIMENTS[args.experiment]
    names = [n for n, _ in runs]
    for name in args.only or ():
        if name not in names:
            raise ConfigError(f"unknown {args.experiment} run {name!r}; choose from {', '.join(names)}")
    steps = _steps(args.steps)
    if args.jobs < 1 or args.threads < 1 or args.n < 1:
        raise ConfigError("--jobs, --threads and --n must be >= 1")
    configs = Path(args.configs) if args.configs else configs_dir()
    out = Path(args.out or f"runs/reproduce/{args.experiment}")
    jobs = []
    for name, description in runs:
        if args.only and name not in args.only:
            continue
        path = configs / f"{args.experiment}_{name}.yaml"
        overrides = [*(args.set or []), *([f"run.steps={steps}"] if steps else []),
                     f"run.stop_at_acc={STOP_AT_ACC}", f"run.threads={args.threads}"]
        cfg = load_config(path, overrides)   # ConfigError on a missing or malformed config
        validate_names(cfg)
        if cfg.run.time_budget_s is not None:
            raise ConfigError(f"{path}: run.time_budget_s is set; a reproduction stops runs by "
                              f"steps and accuracy only (results must not depend on the load)")
        jobs.append(Job(name, description, path, out / name, overrides))
    return jobs


def _prepare_out(jobs: list[Job]) -> None:
    from ponder.train import CONFIG_FILE

    for job in jobs:
        if job.run_dir.exists() and not (job.run_dir / CONFIG_FILE).exists():
            raise ConfigError(f"{str(job.run_dir)!r} exists and is not a ponder run; choose another --out")
    for job in jobs:  # a run is replaced as a whole: its step cap may differ from last time
        if job.run_dir.exists():
            shutil.rmtree(job.run_dir)
        job.run_dir.parent.mkdir(parents=True, exist_ok=True)


def _commands(job: Job, n: int) -> list[tuple[str, list[str]]]:
    ponder = [sys.executable, "-m", "ponder"]
    return [("train", [*ponder, "train", str(job.config), *job.overrides, "--out", str(job.run_dir),
                       "--progress", "plain"]),
            ("eval", [*ponder, "eval", str(job.run_dir), "--split", "valid", "--split", "ood",
                      "--n", str(n)]),
            ("analyze", [*ponder, "analyze", str(job.run_dir)])]


_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def _run_job(job: Job, n: int, threads: int, procs: dict[str, subprocess.Popen]) -> None:
    """train → eval → analyze in child processes; their output is prefixed and passed on."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for stage, cmd in _commands(job, n):
        _say(f"[{job.name}] {stage}: {shlex.join(cmd[2:])}")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, bufsize=1)
        procs[job.name] = proc
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line:
                job.log.append(line)
                _say(f"[{job.name}] {line}")
        job.returncode = proc.wait()
        procs.pop(job.name, None)
        if job.returncode != 0:
            job.failed_at = stage
            _say(f"[{job.name}] {stage} FAILED (exit {job.returncode})")
            break
    job.wall_s = time.perf_counter() - t0


def _run_job_here(job: Job, n: int, threads: int) -> None:
    """train → eval → analyze in this process (``--jobs 1``: no interpreter start-ups)."""
    import torch

    from ponder.analysis import analyze_run
    from ponder.eval import evaluate_run
    from ponder.train import load_config, train

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    stage = "train"
    try:
        _say(f"[{job.name}] train: {job.config} {shlex.join(job.overrides)} --out {job.run_dir}")
        result = train(load_config(job.config, job.overrides), job.run_dir, progress="plain",
                       label=f"[{job.name}] {job.name}")
        _say(f"[{job.name}] stopped at step {result.step} ({result.reason}) after {result.train_s:.1f}s")
        stage = "eval"
        _say(f"[{job.name}] eval: valid and ood, {n} examples each")
        evaluate_run(job.run_dir, ("valid", "ood"), n=n, threads=threads,
                     log=lambda line: _say(f"[{job.name}] {line}"))
        stage = "analyze"
        _say(f"[{job.name}] analyze: {job.run_dir}")
        analyze_run(job.run_dir)
        job.returncode = 0
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the rest
        job.returncode, job.failed_at = 1, stage
        _say(f"[{job.name}] {stage} FAILED: {type(exc).__name__}: {exc}")
    job.wall_s = time.perf_counter() - t0


def run_all(jobs: list[Job], *, n: int, parallel: int, threads: int) -> None:
    """Run the jobs, ``parallel`` at a time (in this process when 1); Ctrl-C stops the children."""
    if parallel == 1:
        for job in jobs:
            _run_job_here(job, n, threads)
        return
    procs: dict[str, subprocess.Popen] = {}
    pending = list(jobs)
    active: list[threading.Thread] = []
    try:
        while pending or active:
            active = [t for t in active if t.is_alive()]
            while pending and len(active) < parallel:
                job = pending.pop(0)
                thread = threading.Thread(target=_run_job, args=(job, n, threads, procs), daemon=True)
                thread.start()
                active.append(thread)
            time.sleep(0.2)
    except KeyboardInterrupt:
        for proc in list(procs.values()):
            proc.terminate()
        raise


# -- results -------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def learning_curve(run_dir: Path, points: int = 8) -> list[tuple[int, float]]:
    """(step, valid token acc) at up to ``points`` evenly spread evaluations, last included."""
    rows = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("split") == "valid" and rec.get("token_acc") is not None:
            rows.append((int(rec["step"]), float(rec["token_acc"])))
    if len(rows) <= points:
        return rows
    picks = sorted({round(i * (len(rows) - 1) / (points - 1)) for i in range(points)})
    return [rows[i] for i in picks]


def collect(job: Job) -> dict[str, Any]:
    """One results row from the run directory (train result, eval summaries, analysis)."""
    from ponder.train import load_config

    cfg = load_config(job.config, job.overrides)
    result = _read_json(job.run_dir / "result.json")
    valid = _read_json(job.run_dir / "eval" / "valid.json")
    ood = _read_json(job.run_dir / "eval" / "ood.json")
    analysis = _read_json(job.run_dir / "analysis.json")
    rho = (analysis.get("alignment") or {}).get("valid", {}).get("rho")
    curve = learning_curve(job.run_dir)
    adatape = cfg.model.kind == "adatape"
    return {
        "name": job.name, "description": job.description, "run_dir": str(job.run_dir),
        "config": str(job.config), "kind": cfg.model.kind,
        "policy": "—" if adatape else cfg.policy.name,
        "compute_unit": "tape tokens" if adatape else "steps",
        "max_compute": cfg.model.adatape.max_tape if adatape else cfg.model.max_steps,
        "valid_acc": valid.get("token_acc"), "ood_acc": ood.get("token_acc"),
        "valid_compute": valid.get("mean_steps"), "ood_compute": ood.get("mean_steps"),
        "rho": rho, "best_valid_acc": max((a for _, a in curve), default=None),
        "train_s": result.get("train_s"), "steps": result.get("step"),
        "stop_reason": result.get("reason"), "wall_s": job.wall_s, "curve": curve,
        "failed_at": job.failed_at,
        "n_valid": valid.get("n_examples"), "n_ood": ood.get("n_examples"),
    }


def machine(load_start: tuple[float, float, float]) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_start": load_start, "load_end": os.getloadavg(), "commit": commit or "unknown",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _f(value: Any, spec: str = ".3f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


TABLE_COLUMNS = ("model", "valid acc", "ood acc", "mean compute valid", "mean compute ood",
                 "ρ compute↔k (valid)", "best valid acc", "train wall s", "steps trained", "stopped by")


def results_markdown(experiment: str, rows: list[dict[str, Any]], *, command: str,
                     mach: dict[str, Any], task: str, report: Optional[str]) -> str:
    lines = [f"# Reproduction: {experiment}", "",
             f"Measured by `ponder reproduce` on {mach['date']} (commit {mach['commit']}).", "",
             "Command:", "", "```", command, "```", "",
             f"Machine: {mach['nproc']} CPUs (`nproc`), {mach['cpu']}; torch {mach['torch']}, "
             f"Python {mach['python']}, {mach['platform']}. Load average (1/5/15 min) at the start "
             f"{' / '.join(f'{x:.2f}' for x in mach['load_start'])}, at the end "
             f"{' / '.join(f'{x:.2f}' for x in mach['load_end'])} (the machine was shared).", "",
             f"Task: {task}. Accuracy is token accuracy at the `?` position (one scored token per "
             f"example), on {rows[0].get('n_valid') or '?'} valid and {rows[0].get('n_ood') or '?'} "
             f"ood examples. Training stops at valid accuracy ≥ {STOP_AT_ACC} or at the run's "
             f"step cap (wall-clock time is reported only). Mean compute: core steps per token (recurrent models), "
             f"layers (the fixed Transformer), tape tokens read (AdaTape), of the maximum shown. "
             f"ρ: Spearman correlation between a token's compute and its complexity k "
             f"(— when the compute is constant).", "",
             "| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(TABLE_COLUMNS) - 1)) + "|"]
    for r in rows:
        unit = "tape" if r["compute_unit"] == "tape tokens" else "steps"
        stop = r["stop_reason"] or "—"
        if r["failed_at"]:
            stop = f"FAILED in {r['failed_at']}"
        lines.append("| " + " | ".join([
            f"**{r['name']}**: {r['description']}", _f(r["valid_acc"]), _f(r["ood_acc"]),
            f"{_f(r['valid_compute'], '.2f')} / {r['max_compute']} {unit}",
            f"{_f(r['ood_compute'], '.2f')} / {r['max_compute']} {unit}", _f(r["rho"], ".2f"),
            _f(r["best_valid_acc"]), _f(r["train_s"], ".0f"), str(r["steps"] if r["steps"] is not None else "—"),
            stop]) + " |")
    lines += ["", "Learning curves (valid token accuracy at training step, from `metrics.jsonl`):", ""]
    for r in rows:
        curve = ", ".join(f"{s}: {a:.3f}" for s, a in r["curve"]) or "—"
        lines.append(f"- {r['name']}: {curve}")
    lines += ["", "Configs: " + ", ".join(f"`{Path(r['config']).name}`" for r in rows) + "."]
    if report:
        lines += [f"Report of all runs (figures, including compute vs complexity k): `{report}`."]
    return "\n".join(lines) + "\n"


def _task_description(job: Job) -> str:
    import ponder.tasks
    from ponder.train import load_config

    cfg = load_config(job.config, job.overrides)
    task = ponder.tasks.get(cfg.task.name, cfg.task.preset, **dict(cfg.task.knobs))
    knobs = ", ".join(f"{k}={v}" for k, v in task.knobs().items())
    preset = f", preset `{cfg.task.preset}`" if cfg.task.preset else ""
    return f"`{cfg.task.name}`{preset} ({knobs})"


def write_doc(path: Path, text: str) -> None:
    from ponder.train import atomic_write_text

    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARK in old:
            notes = old[old.index(NOTES_MARK):]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text + ("\n" + notes if notes else ""))


def doc_path(args: argparse.Namespace, out: Path) -> Path:
    """Where the results go: ``--doc``, else docs/results/EXPERIMENT.md for a full run and
    OUT/EXPERIMENT.md for an ``--only`` subset (so that a partial re-run cannot replace the
    full committed table with a table of a few rows)."""
    if args.doc:
        return Path(args.doc)
    names = [n for n, _ in EXPERIMENTS[args.experiment]]
    if args.only and set(args.only) != set(names):
        return out / f"{args.experiment}.md"
    return Path(f"docs/results/{args.experiment}.md")


def command_line(args: argparse.Namespace) -> str:
    parts = ["ponder", "reproduce", args.experiment]
    if args.out:
        parts += ["--out", args.out]
    if args.steps:
        parts += ["--steps", str(args.steps)]
    parts += ["--jobs", str(args.jobs),
              "--threads", str(args.threads), "--n", str(args.n)]
    if args.only:
        parts += ["--only", *args.only]
    if args.configs:
        parts += ["--configs", args.configs]
    if args.set:
        parts += ["--set", *args.set]
    if args.doc:
        parts += ["--doc", args.doc]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from ponder.apps import anira

    if args.experiment == "anira":
        return anira.run(args)
    for flag, value in (("--seeds", args.seeds), ("--executor", args.executor), ("--address", args.address),
                        ("--ledger", args.ledger), ("--resume", args.resume or None),
                        ("--from-ledger", args.from_ledger or None)):
        if value is not None:
            raise ConfigError(f"{flag} is an option of `ponder reproduce anira` only")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    jobs = plan(args)
    _prepare_out(jobs)
    out = jobs[0].run_dir.parent
    from ponder.train import load_config

    caps = sorted({load_config(j.config, j.overrides).run.steps for j in jobs})
    cap = f"{caps[0]}" if len(caps) == 1 else f"{caps[0]}–{caps[-1]}"
    print(f"ponder reproduce {args.experiment}: {len(jobs)} runs ({', '.join(j.name for j in jobs)}), "
          f"{args.jobs} at a time with {args.threads} thread(s) each, up to {cap} training steps "
          f"per run → {out}/", flush=True)
    run_all(jobs, n=args.n, parallel=args.jobs, threads=args.threads)
    rows = [collect(job) for job in jobs]
    report = None
    done = [r["run_dir"] for r, job in zip(rows, jobs) if job.failed_at is None]
    if done and not args.no_report:
        print(f"writing the report of {len(done)} runs ...", flush=True)
        from ponder.analysis import write_report

        report = str(write_report(done, out / "report.html"))
    from ponder.train import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(rows, indent=1))
    doc = doc_path(args, out)
    text = results_markdown(args.experiment, rows, command=command_line(args), mach=machine(load_start),
                            task=_task_description(jobs[0]), report=report)
    write_doc(doc, text)
    print(text)
    print(f"results: {doc} and {out / 'results.json'}" + (f"; report: {report}" if report else ""))
    print(f"done in {time.perf_counter() - t0:.0f}s")
    failed = [j.name for j in jobs if j.failed_at]
    if failed:
        sys.stderr.write(f"ponder: error: run(s) failed: {', '.join(failed)} (see their log lines above)\n")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ponder.apps import anira

    p = sub.add_parser("reproduce", help="re-measure a published result (parity, anira) on this machine",
                       description=__doc__.splitlines()[0])
    p.add_argument("experiment", help=f"experiment ({', '.join([*EXPERIMENTS, 'anira'])})")
    p.add_argument("--out", default=None, help="runs directory (default runs/reproduce/EXPERIMENT)")
    p.add_argument("--steps", type=int, default=None,
                   help="step cap of every run (default: each config's run.steps)")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None, help="run only these models (anira: tasks and/or policies)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--n", type=int, default=1000, help="examples per evaluated split (default 1000)")
    p.add_argument("--configs", default=None, help="directory of EXPERIMENT_NAME.yaml configs "
                                                   "(default ./configs, else the repository's)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", default=None,
                   help="config overrides applied to every run (e.g. run.steps=50)")
    p.add_argument("--doc", default=None, help="results file (default docs/results/EXPERIMENT.md; "
                                               "OUT/EXPERIMENT.md with --only)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    anira.add_arguments(p)
    p.set_defaults(func=run)
