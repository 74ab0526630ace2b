"""``ponder reproduce anira``: the ANIRA study, every task × policy × seed, then the findings.

Every task with a non-constant complexity (``configs/studies/anira_tasks.yaml``: one line of
settings per task) × the policies ``POLICIES`` (``configs/anira_<policy>.yaml``: one base
each, identical but for the policy) × ``--seeds`` seeds (``run.seed`` = 0..seeds-1). A run
trains to valid accuracy ``run.stop_at_acc`` or its step cap (``steps`` of its task, or
``--steps``); a wall-clock budget is refused (results must not depend on the load). Each
run is evaluated on ``valid`` and ``ood`` and analysed; then one HTML report and a results
file (``docs/results/anira.md``; with ``--only``, ``OUT/anira.md``) say per task whether
each of the paper's three findings is reproduced (``ponder.apps.findings``), with CIs.

Runs are scheduled by an executor (``ponder.apps.executors``): a local process pool of
``--jobs`` workers, or Ray (``--executor ray [--address HOST:PORT]``). The expected wall time
of the full study (an estimate) and the findings' rules are in docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from ponder.apps import findings as fnd
from ponder.apps.executors import EXECUTORS, Outcome, Work, make_executor, run_work
from ponder.errors import ConfigError

DEFAULT_SEEDS = 3
POLICIES = ("fixed", "anira_e", "anira_o", "pondernet", "act")
TASKS_FILE = "studies/anira_tasks.yaml"  # not a run config: the per-task table
TASK_KEYS = {"preset", "knobs", "positions", "max_steps", "steps", "token_parts"}
REQUIRED_KEYS = {"positions", "max_steps", "steps"}


def read_tasks(configs: Path) -> dict[str, dict[str, Any]]:
    """The per-task settings (``studies/anira_tasks.yaml``), checked: known tasks, known keys."""
    import ponder.tasks

    path = configs / TASKS_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except OSError:
        raise ConfigError(f"{path}: cannot read the per-task settings") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping task → settings")
    for task, settings in data.items():
        if task not in ponder.tasks.names():
            raise ConfigError(f"{path}: unknown task {task!r}; tasks: {', '.join(ponder.tasks.names())}")
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: {task}: expected a mapping of settings")
        unknown = sorted(set(settings) - TASK_KEYS)
        missing = sorted(REQUIRED_KEYS - set(settings))
        if unknown or missing:
            raise ConfigError(f"{path}: {task}: " + (f"unknown setting {unknown[0]!r}" if unknown
                                                     else f"missing setting {missing[0]!r}")
                              + f"; settings: {', '.join(sorted(TASK_KEYS))}")
    return data


def task_overrides(task: str, settings: dict[str, Any]) -> list[str]:
    """The overrides that turn a policy's base config into ``task``'s run."""
    import ponder.tasks

    knobs = settings.get("knobs") or {}
    flow = "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in knobs.items()) + "}"
    preset = settings.get("preset")
    return [f"task.name={task}", f"task.preset={'null' if preset is None else preset}",
            f"task.knobs={flow}", f"model.positions={settings['positions']}",
            f"model.max_steps={settings['max_steps']}",
            f"model.causal={str(ponder.tasks.task_class(task).causal).lower()}",
            f"model.token_parts={str(bool(settings.get('token_parts', False))).lower()}",
            f"run.steps={settings['steps']}"]


def run_name(task: str, policy: str, seed: int) -> str:
    return f"{task}/{policy}/seed{seed}"


def _split_only(only: Optional[list[str]], tasks: list[str]) -> tuple[list[str], list[str]]:
    """``--only`` names tasks and/or policies; each dimension not named is kept whole."""
    only = only or []
    for name in only:
        if name not in tasks and name not in POLICIES:
            raise ConfigError(f"unknown anira task or policy {name!r}; tasks: {', '.join(tasks)}; "
                              f"policies: {', '.join(POLICIES)}")
    picked_tasks = [t for t in tasks if t in only] or tasks
    picked_policies = [p for p in POLICIES if p in only] or list(POLICIES)
    return picked_tasks, picked_policies


def plan(args: argparse.Namespace) -> list[Work]:
    """Check the arguments and every run's config (no training yet): one Work per run, in
    queue order (seed, task, policy)."""
    from ponder.train import configs_dir, load_config, validate_names

    args.seeds = DEFAULT_SEEDS if args.seeds is None else args.seeds
    args.executor = args.executor or "local"

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.jobs < 1 or args.threads < 1 or args.n < 1:
        raise ConfigError("--jobs, --threads and --n must be >= 1")
    make_executor(args.executor, jobs=args.jobs, threads=args.threads, address=args.address)
    configs = Path(args.configs) if args.configs else configs_dir()
    settings = read_tasks(configs)
    tasks, policies = _split_only(args.only, list(settings))
    out = Path(args.out or "runs/reproduce/anira")
    bases: list[tuple[str, str, Path, list[str]]] = []
    vocabs: dict[str, Any] = {}
    for task in tasks:
        for policy in policies:
            path = configs / f"anira_{policy}.yaml"
            base = [*task_overrides(task, settings[task]), *(args.set or []),
                    *([f"run.steps={args.steps}"] if args.steps else []), f"run.threads={args.threads}"]
            cfg = load_config(path, base)   # ConfigError on a missing or malformed config
            validate_names(cfg)
            if cfg.run.time_budget_s is not None:
                raise ConfigError(f"{path}: run.time_budget_s is set; a reproduction stops runs by "
                                  f"steps and accuracy only (results must not depend on the load)")
            if cfg.policy.name != policy:
                raise ConfigError(f"{path}: policy.name is {cfg.policy.name!r}, expected {policy!r}")
            _check_builds(cfg, vocabs)
            bases.append((task, policy, path, base))
    works: list[Work] = []
    for seed in range(args.seeds):   # seed-major: a study stopped half-way has whole seeds
        for task, policy, path, base in bases:
            name = run_name(task, policy, seed)
            overrides = (*base, f"run.seed={seed}")
            works.append(Work(name, str(path), overrides, str(out / name), args.n, args.threads,
                              key=run_key(load_config(path, list(overrides)), args.n)))
    return works


def run_key(cfg: Any, n: int) -> str:
    """What a run's result depends on: its resolved config (but the thread count, which
    changes the speed only) and the number of evaluated examples. Only the settings that
    differ from the defaults are hashed, so a config field added later with a default that
    keeps the old behaviour leaves the ledger's keys valid. Code changes are not in the key:
    re-run from scratch (without ``--resume``) after changing what the code computes."""
    import dataclasses
    import hashlib

    from ponder.train import TrainConfig

    config = dataclasses.asdict(cfg)
    config["run"].pop("threads", None)
    config = _changed(config, dataclasses.asdict(TrainConfig()))
    text = json.dumps({"config": config, "n": n}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _changed(value: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The entries of the nested dict ``value`` that differ from ``default``'s."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        d = default.get(k, _MISSING)
        if isinstance(v, dict) and isinstance(d, dict):
            sub = _changed(v, d)
            if sub:
                out[k] = sub
        elif v != d:
            out[k] = v
    out.update({k: "<absent>" for k in default if k not in value})
    return out


_MISSING = object()


def _check_builds(cfg: Any, vocabs: dict[str, Any]) -> None:
    """Build the run's model once (no training): a model setting the config loader cannot
    check (``model.positions``, ...) fails here, before any run starts."""
    import ponder.models
    import ponder.policies
    import ponder.tasks

    key = json.dumps([cfg.task.name, cfg.task.preset, dict(cfg.task.knobs)], sort_keys=True, default=str)
    if key not in vocabs:
        vocabs[key] = ponder.tasks.Vocab.for_task(
            ponder.tasks.get(cfg.task.name, cfg.task.preset, **dict(cfg.task.knobs)))
    vocab = vocabs[key]
    policy = ponder.policies.get(cfg.policy.name, **dict(cfg.policy.knobs))
    ponder.models.build(cfg.model, policy, vocab_size=len(vocab), tokens=list(vocab.itos))


def prepare_out(works: list[Work]) -> None:
    from ponder.train import CONFIG_FILE

    for work in works:
        d = Path(work.run_dir)
        if d.exists() and not (d / CONFIG_FILE).exists():
            raise ConfigError(f"{str(d)!r} exists and is not a ponder run; choose another --out")
    for work in works:  # a run is replaced as a whole: its step cap may differ from last time
        d = Path(work.run_dir)
        if d.exists():
            shutil.rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- the ledger: one row per finished run, so that a study can be resumed ---------------------
def ledger_path(args: argparse.Namespace, out: Path) -> Path:
    """``--ledger``, else beside the results file: docs/results/anira_runs.jsonl for the full
    study (committed with it, so a later session can ``--resume`` it), OUT/anira_runs.jsonl
    for an ``--only`` subset."""
    if args.ledger:
        return Path(args.ledger)
    doc = doc_path(args, out)
    return doc.with_name(doc.stem + "_runs.jsonl")


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The ledger's rows by run name (a later row of a name replaces an earlier one)."""
    if not path.exists():
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row["name"]] = row
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{str(path)!r} line {i} is not a ledger row; fix or remove the file") from None
    return rows


def write_ledger(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    from ponder.train import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows.values()))


def reusable(works: list[Work], ledger: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ledger's rows that stand for a planned run: same name and key, not failed."""
    return {w.name: ledger[w.name] for w in works
            if w.name in ledger and ledger[w.name].get("key") == w.key and not ledger[w.name].get("failed")}


def collect(work: Work, outcome: Outcome) -> dict[str, Any]:
    """One results row (the findings' input) from a run directory."""
    task, policy, seed = work.name.split("/")
    d = Path(work.run_dir)
    result = _read_json(d / "result.json")
    valid, ood = _read_json(d / "eval" / "valid.json"), _read_json(d / "eval" / "ood.json")
    analysis = _read_json(d / "analysis.json")
    return {"name": work.name, "task": task, "policy": policy, "seed": int(seed.removeprefix("seed")),
            "run_dir": work.run_dir, "failed": not outcome.ok, "failed_at": outcome.failed_at,
            "error": outcome.error, "wall_s": outcome.wall_s,
            "steps": result.get("step"), "stop_reason": result.get("reason"),
            "train_s": result.get("train_s"),
            "valid_acc": valid.get("token_acc"), "ood_acc": ood.get("token_acc"),
            "valid_steps": valid.get("mean_steps"), "ood_steps": ood.get("mean_steps"),
            "max_steps": valid.get("max_steps"),
            "rho": ((analysis.get("alignment") or {}).get("valid") or {}).get("rho"),
            "timing": ((analysis.get("decision_timing") or {}).get("valid") or {}).get("nonlinear"),
            "n_valid": valid.get("n_examples"), "n_ood": ood.get("n_examples"), "key": work.key,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# -- the results file ----------------------------------------------------------------------
def _f(value: Any, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def _stat(stats: Optional[dict[str, Any]], spec: str = ".3f") -> str:
    if not stats:
        return "—"
    ci = stats.get("ci")
    return _f(stats["mean"], spec) + (f" [{_f(ci[0], spec)}, {_f(ci[1], spec)}]" if ci else "")


FINDING_TITLES = {"alignment": "(1) alignment without supervision: ρ(steps, complexity) > 0 on valid",
                  "no_generalisation": f"(2) no generalisation: ood acc well below valid (gap > {fnd.WELL_BELOW})",
                  "timing": "(3) timing: anira_o explained by execution state, anira_e by static cues"}
STAT_LABELS = {"alignment": "ρ", "no_generalisation": "valid − ood acc",
               "timing": "R²(execution) − R²(static)"}
METRIC_COLUMNS = ("policy", "runs", "valid acc", "ood acc", "mean steps valid", "mean steps ood",
                  "ρ valid", "steps trained")


def results_markdown(rows: list[dict[str, Any]], result: dict[str, dict[str, Any]], *,
                     command: str, mach: dict[str, Any], ledger: Optional[str] = None,
                     resumed: int = 0, jobs: int = 1) -> str:
    seeds = sorted({r["seed"] for r in rows})
    finished = sorted(r["finished"] for r in rows if r.get("finished"))
    commits = sorted({r["commit"] for r in rows if r.get("commit")})
    hours = sum(r.get("wall_s") or 0.0 for r in rows) / 3600
    lines = ["# Reproduction: anira", "",
             f"Generated by `ponder reproduce anira` on {mach['date']} (commit {mach['commit']}); "
             f"do not edit above the notes mark.", "", "Command:", "", "```", command, "```", "",
             f"Machine: {mach['nproc']} CPUs (`nproc`), {mach['cpu']}; torch {mach['torch']}, "
             f"Python {mach['python']}. Load average (1/5/15 min) at the start "
             f"{' / '.join(f'{x:.2f}' for x in mach['load_start'])}, at the end "
             f"{' / '.join(f'{x:.2f}' for x in mach['load_end'])}.", "",
             *([f"Runs finished {finished[0]} – {finished[-1]} (commits {', '.join(commits)}); "
                f"{resumed} of them were kept from an earlier invocation (`--resume`, ledger "
                f"`{ledger}`). Every run's own wall time summed: {hours:.1f} h, so ≈ {hours / jobs:.1f} h "
                f"of wall clock at {jobs} at a time.", ""] if finished else []),
             f"{len(rows)} runs, seeds {', '.join(map(str, seeds))}. Means over seeds with "
             f"{fnd.CONFIDENCE:.0%} Student-t CIs over seeds in brackets. Rules "
             f"(`ponder.apps.findings`): (1) CI of ρ above 0; (2) mean valid acc ≥ {fnd.LEARNED} and "
             f"CI of valid − ood acc above {fnd.WELL_BELOW}; (3) CI of R²(execution) − R²(static) of "
             f"the gradient-boosting decision-timing probe on valid above 0 (execution) / below 0 "
             f"(static), over seeds (one seed: its bootstrap CI over examples). A task's verdict: "
             f"yes = every ANIRA policy with finished runs, partly = some.", "",
             "## Findings per task", "",
             "| task | (1) alignment | (2) no generalisation | (3) timing |", "|---|---|---|---|"]
    for task, res in result.items():
        lines.append(f"| {task} | " + " | ".join(res[f]["verdict"] for f in fnd.FINDINGS) + " |")
    lines += ["", "## Per task", ""]
    for task, res in result.items():
        lines += [f"### {task}", "", "| " + " | ".join(METRIC_COLUMNS) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(METRIC_COLUMNS) - 1)) + "|"]
        for policy in POLICIES:
            runs = [r for r in rows if r["task"] == task and r["policy"] == policy]
            if not runs:
                continue
            ok = [r for r in runs if not r["failed"]]
            col = lambda key: fnd.mean_ci(r[key] for r in ok if r[key] is not None)  # noqa: E731
            failed = len(runs) - len(ok)
            lines.append("| " + " | ".join([
                policy, f"{len(ok)}" + (f" (+{failed} FAILED)" if failed else ""),
                _stat(col("valid_acc")), _stat(col("ood_acc")), _stat(col("valid_steps"), ".2f"),
                _stat(col("ood_steps"), ".2f"), _stat(col("rho"), ".2f"), _stat(col("steps"), ".0f")]) + " |")
        lines.append("")
        for f in fnd.FINDINGS:
            lines.append(f"- {FINDING_TITLES[f]}: **{res[f]['verdict']}**")
            for policy, v in res[f]["policies"].items():
                lines.append(f"  - {policy}: {v['verdict']} — {STAT_LABELS[f]} {_stat(v['stats'])}; {v['why']}")
        lines.append("")
    failed = [r for r in rows if r["failed"]]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['name']}: {r['failed_at']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines) + "\n"


def command_line(args: argparse.Namespace) -> str:
    parts = ["ponder", "reproduce", "anira", "--seeds", str(args.seeds), "--jobs", str(args.jobs),
             "--threads", str(args.threads), "--n", str(args.n), "--executor", args.executor]
    for flag, value in (("--out", args.out), ("--steps", args.steps), ("--address", args.address),
                        ("--configs", args.configs), ("--doc", args.doc)):
        if value is not None:
            parts += [flag, str(value)]
    if args.resume:
        parts.append("--resume")
    if args.from_ledger:
        parts.append("--from-ledger")
    if args.ledger:
        parts += ["--ledger", args.ledger]
    if args.only:
        parts += ["--only", *args.only]
    if args.set:
        parts += ["--set", *args.set]
    return shlex.join(parts)


def doc_path(args: argparse.Namespace, out: Path) -> Path:
    if args.doc:
        return Path(args.doc)
    return out / "anira.md" if args.only else Path("docs/results/anira.md")


def run(args: argparse.Namespace) -> int:
    from ponder.apps.reproduce import machine, write_doc
    from ponder.train import atomic_write_text

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    works = plan(args)
    out = Path(args.out or "runs/reproduce/anira")
    ledger_file = ledger_path(args, out)
    ledger = read_ledger(ledger_file)
    kept = reusable(works, ledger) if args.resume or args.from_ledger else {}
    if args.from_ledger:      # run nothing: the results of what the ledger holds (maybe partial)
        works = [w for w in works if w.name in kept]
        if not works:
            raise ConfigError(f"{str(ledger_file)!r} holds no finished run of this study")
    todo = [w for w in works if w.name not in kept]
    prepare_out(todo)
    for w in todo:            # a planned run's old row goes: it is re-run
        ledger.pop(w.name, None)
    commit = machine(load_start)["commit"]
    print(f"ponder reproduce anira: {len(works)} runs"
          + (f" ({len(kept)} finished earlier, in {ledger_file}; {len(todo)} to run)" if kept or args.resume else "")
          + f", {args.executor} executor, {args.jobs} at a time with {args.threads} thread(s) each → {out}/",
          flush=True)
    executor = make_executor(args.executor, jobs=args.jobs, threads=args.threads, address=args.address)
    by_name = {w.name: w for w in todo}
    count = [0]

    def done(outcome: Outcome) -> None:
        count[0] += 1
        state = "ok" if outcome.ok else f"FAILED in {outcome.failed_at}: {outcome.error}"
        print(f"[{count[0]}/{len(todo)}] {outcome.name}: {state} ({outcome.wall_s:.0f}s)", flush=True)
        # into the ledger at once: a study killed half-way keeps what it finished
        ledger[outcome.name] = {**collect(by_name[outcome.name], outcome), "commit": commit}
        write_ledger(ledger_file, ledger)

    executor.map(run_work, todo, done)
    rows = [ledger[w.name] for w in works]
    result = fnd.task_findings(rows)
    atomic_write_text(out / "results.json", json.dumps({"runs": rows, "findings": result}, indent=1))
    report = None
    ok_dirs = [r["run_dir"] for r in rows if not r["failed"] and Path(r["run_dir"], "eval").is_dir()]
    if ok_dirs and not args.no_report:
        from ponder.analysis import write_report

        report = str(write_report(ok_dirs, out / "report.html"))
    doc = doc_path(args, out)
    text = results_markdown(rows, result, command=command_line(args), mach=machine(load_start),
                            ledger=str(ledger_file), resumed=len(kept), jobs=args.jobs)
    if report:
        text += f"\nReport of {len(ok_dirs)} runs: `{report}`.\n"
    write_doc(doc, text)
    print(text)
    print(f"results: {doc}, {ledger_file} and {out / 'results.json'}" + (f"; report: {report}" if report else ""))
    print(f"done in {time.perf_counter() - t0:.0f}s")
    failed = [r["name"] for r in rows if r["failed"]]
    if failed:
        import sys

        sys.stderr.write(f"ponder: error: {len(failed)} run(s) failed: {', '.join(failed[:5])}"
                         f"{' …' if len(failed) > 5 else ''} (see above)\n")
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options only ``anira`` reads (the rest are ``ponder reproduce``'s)."""
    p.add_argument("--seeds", type=int, default=None, help="anira: seeds per task × policy (default 3)")
    p.add_argument("--resume", action="store_true",
                   help="anira: keep the runs the ledger holds with the same config; run the rest")
    p.add_argument("--from-ledger", action="store_true",
                   help="anira: run nothing; write the results of the runs the ledger holds")
    p.add_argument("--ledger", default=None, help="anira: the file of finished runs (default: beside "
                                                   "the results file, NAME_runs.jsonl)")
    p.add_argument("--executor", default=None,
                   help=f"anira: {' or '.join(EXECUTORS)} (default local: a process pool of --jobs)")
    p.add_argument("--address", default=None, help="anira, --executor ray: the cluster (HOST:PORT or "
                                                    "auto; default: a local Ray instance)")
