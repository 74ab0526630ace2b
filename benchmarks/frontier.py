"""The 2025–26 frontier mechanisms side by side (docs/results/frontier.md).

    python benchmarks/frontier.py --out runs/frontier [--steps 600] [--only NAME ...]
        [--exits NAME ...] [--tasks list_rank sudoku] [--seeds 0 1 2] [--n 500] [--jobs 1]

Per task × mechanism × seed: ``ponder train`` (small recurrent model, budget in optimiser
steps, one thread), ``ponder eval --depths 1:2N`` (valid and ood); then
one Markdown table per task (accuracy, mean steps, ρ(steps, complexity), ood) and the
accuracy-vs-depth curves, printed and written to ``OUT/frontier.md``. Runs already finished
in OUT are reused (``ponder train`` resumes / reports already finished). ``--seeds`` applies to
the mechanisms in ``SEEDED`` (fixed depth with and without depth randomisation); the others
run seed 0 only.

``--exits`` (default: none): training-free exits evaluated on a *trained* checkpoint, no
training of their own (``ponder eval RUN --policy EXIT``, no depth curve, into
``RUN/policies/EXIT``): ``EXIT @ BASE`` evaluates the seed-0 run of mechanism BASE (which
must be in the same OUT) under EXIT at its default knobs; one table per task for them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Per task: the overrides and the model's max_steps N (the depth curve goes to 2N). sudoku 4×4
# is learned by the small model in 600 steps; list_rank needs the demo's size (d_model 64,
# N 8, batch 64: docs/results/demo.md), the small one stalls at ~0.4 valid.
TASKS = {
    "list_rank": (["task.name=list_rank", "model.positions=none", "model.token_parts=true",
                   "model.d_model=64", "model.d_ff=128", "run.batch_size=64"], 8),
    "sudoku": (["task.name=sudoku", "model.positions=learned", "model.token_parts=false",
                "model.d_model=32", "model.d_ff=64", "run.batch_size=32"], 6),
}
COMMON = ["model.kind=recurrent", "model.n_heads=4", "model.prelude=1", "model.core=1", "model.coda=0",
          "optim.lr=3e-3", "schedule.warmup=50", "run.threads=1", "run.valid_batches=4",
          "run.log_every=50"]
DEPTH_RAND = ["depth.sampler=poisson_lognormal", "depth.mean=4", "depth.min_steps=1"]
MECHANISMS = {
    "fixed": ["policy.name=fixed"],
    "fixed+depth_rand": ["policy.name=fixed", *DEPTH_RAND],
    "kl_exit": ["policy.name=kl_exit"],
    "kl_exit(final)+depth_rand": ["policy.name=kl_exit", "policy.knobs.train_on=final", *DEPTH_RAND],
    # the sudoku table's run, at Huginn's threshold (latent_exit's default before it became 0.15)
    "latent_exit(0.03)": ["policy.name=latent_exit", "policy.knobs.threshold=0.03"],
    "q_halt": ["policy.name=q_halt"],
    "q_halt_sample": ["policy.name=q_halt_sample"],
    "oracle(complexity)": ["policy.name=oracle", "policy.knobs.label=complexity"],
    "anira_o": ["policy.name=anira_o"],
    "pondernet": ["policy.name=pondernet"],
    "ouro": ["policy.name=ouro"],
}
SEEDED = ("fixed", "fixed+depth_rand")
# the training-free convergence exits, evaluated on the checkpoints of these mechanisms:
# fixed depth (never trained for its intermediate readouts), depth-randomised fixed depth
# (Huginn's recipe) and kl_exit (trained with the per-exit losses: every readout is trained)
CONVERGENCE = ("kl_exit", "minp_kl_exit", "entropy_exit", "argmax_exit", "cosine_exit", "accel_exit",
               "fixed_point_exit", "latent_exit")
EXIT_BASES = ("fixed", "fixed+depth_rand", "kl_exit")
EXITS = {f"{e} @ {b}": (b, e) for b in EXIT_BASES for e in CONVERGENCE if e != b}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def ponder(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ponder", *args], check=True, stdout=subprocess.DEVNULL)


def one_run(out: Path, task: str, mech: str, seed: int, steps: int, n: int) -> Path:
    run_dir = out / task / f"{slug(mech)}_s{seed}"
    task_overrides, n_steps = TASKS[task]
    overrides = [*COMMON, *task_overrides, f"model.max_steps={n_steps}", *MECHANISMS[mech],
                 f"run.seed={seed}", f"run.steps={steps}", f"run.eval_every={steps}",
                 f"run.ckpt_every={steps}"]
    ponder("train", *overrides, "--out", str(run_dir), "--progress", "none")
    if not done(run_dir):
        ponder("eval", str(run_dir), "--n", str(n), "--depths", f"1:{2 * n_steps}")
    return run_dir


def exit_dir(out: Path, task: str, name: str) -> Path:
    base, policy = EXITS[name]
    return out / task / f"{slug(base)}_s0" / "policies" / policy


def one_exit(out: Path, task: str, name: str, n: int) -> Path:
    base, policy = EXITS[name]
    base_dir = out / task / f"{slug(base)}_s0"
    if not (base_dir / "result.json").exists():
        raise SystemExit(f"{name}: train {base} on {task} first (no {base_dir}/result.json)")
    run_dir = exit_dir(out, task, name)
    if not done(run_dir, curve=False):
        # no depth curve: on a loaded machine it costs 16–24 evaluations per exit, and at a
        # budget past its exit step a halting rule's curve is flat (see the trained exits)
        ponder("eval", str(base_dir), "--n", str(n), "--policy", policy)
    return run_dir


def row(run_dir: Path) -> dict:
    """The table's numbers of one evaluated run directory, from its eval records: the split
    summaries, ρ(steps, complexity) on valid (``ponder.analysis.alignment``, the function behind
    ``analysis.json``'s ``alignment.valid.rho``) and the depth curve."""
    from ponder.analysis import alignment
    from ponder.analysis.load import load

    run = load(run_dir)
    s = run.summaries
    curve = run.depth_curve.get("splits", {"valid": [], "ood": []})
    return {"valid_acc": s["valid"]["token_acc"], "valid_steps": s["valid"]["mean_steps"],
            "rho": alignment.analyse_split(run.split("valid"), seed=0)["rho"],
            "ood_acc": s["ood"]["token_acc"], "ood_seen": s["ood"].get("acc_seen"),
            "ood_steps": s["ood"]["mean_steps"],
            "curve_valid": [r["token_acc"] for r in curve["valid"]],
            "curve_ood": [r["token_acc"] for r in curve["ood"]]}


def done(run_dir: Path, curve: bool = True) -> bool:
    if curve:
        return (run_dir / "eval" / "depth_curve.json").exists()
    return all((run_dir / "eval" / f"{split}.json").exists() for split in ("valid", "ood"))


def fmt(x, spec=".3f") -> str:
    return "–" if x is None else format(x, spec)


def result_tables(dirs: dict[str, Path], n_steps: int, what: str, curves: bool = True) -> list[str]:
    """The main table and (``curves``) the depth curves of the finished runs among ``dirs``
    (label → dir)."""
    lines = [f"| {what} | valid acc | valid mean steps | ρ(steps, complexity) valid | ood acc | "
             "ood acc (seen labels) | ood mean steps |", "|---|---|---|---|---|---|---|"]
    rows = {}
    for label, run_dir in dirs.items():
        if not done(run_dir, curve=curves):
            continue
        r = rows[label] = row(run_dir)
        lines.append(f"| {label} | {fmt(r['valid_acc'])} | {fmt(r['valid_steps'], '.2f')} | "
                     f"{fmt(r['rho'])} | {fmt(r['ood_acc'])} | {fmt(r['ood_seen'])} | "
                     f"{fmt(r['ood_steps'], '.2f')} |")
    if not curves:
        return lines
    lines += ["", f"Accuracy against inference depth (token accuracy at max_steps = 1..{2 * n_steps}; "
              f"trained N = {n_steps}), valid / ood:", "",
              f"| {what} | " + " | ".join(str(d) for d in range(1, 2 * n_steps + 1)) + " |",
              "|---|" + "---|" * (2 * n_steps)]
    for label, r in rows.items():
        for split in ("valid", "ood"):
            lines.append(f"| {label} · {split} | " + " | ".join(fmt(v, ".2f") for v in r[f"curve_{split}"]) + " |")
    return lines


def tables(out: Path, tasks, mechs, seeds, exits=()) -> str:
    lines = []
    for task in tasks:
        n_steps = TASKS[task][1]
        lines += [f"### {task}", ""]
        lines += result_tables({m: out / task / f"{slug(m)}_s0" for m in mechs}, n_steps, "mechanism")
        if exits:
            lines += ["", "Training-free exits evaluated on a trained checkpoint (`EXIT @ BASE`: "
                      "BASE's seed-0 run under EXIT, default knobs; no training of their own):", ""]
            lines += result_tables({e: exit_dir(out, task, e) for e in exits}, n_steps, "exit @ checkpoint",
                                   curves=False)
        seeded = [m for m in SEEDED if m in mechs]
        if len(seeds) > 1 and seeded:
            lines += ["", f"Ood accuracy over seeds {', '.join(map(str, seeds))} (mean ± sample std):", "",
                      "| mechanism | ood acc per seed | mean | std | valid acc per seed | "
                      "ood acc (seen labels) mean ± std |", "|---|---|---|---|---|---|"]
            for mech in seeded:
                rs = [row(out / task / f"{slug(mech)}_s{s}") for s in seeds
                      if done(out / task / f"{slug(mech)}_s{s}")]
                accs = [r["ood_acc"] for r in rs]
                seen = [r["ood_seen"] for r in rs]
                if len(accs) > 1:
                    lines.append(f"| {mech} | {', '.join(fmt(a) for a in accs)} | "
                                 f"{fmt(statistics.mean(accs))} | {fmt(statistics.stdev(accs))} | "
                                 f"{', '.join(fmt(r['valid_acc']) for r in rs)} | "
                                 f"{fmt(statistics.mean(seen))} ± {fmt(statistics.stdev(seen))} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/frontier"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--only", nargs="+", default=list(MECHANISMS), choices=list(MECHANISMS))
    p.add_argument("--exits", nargs="*", default=[], choices=list(EXITS),
                   help="training-free exits on trained checkpoints ('EXIT @ BASE')")
    p.add_argument("--all-exits", action="store_true", help="--exits with every EXIT @ BASE")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--table-only", action="store_true", help="only print the tables of finished runs")
    args = p.parse_args()
    exits = list(EXITS) if args.all_exits else args.exits
    jobs = [(task, mech, seed) for task in args.tasks for mech in args.only
            for seed in (args.seeds if mech in SEEDED else [0])]
    if not args.table_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            for run_dir in pool.map(lambda j: one_run(args.out, *j, args.steps, args.n), jobs):
                print(f"done {run_dir}", flush=True)
            evals = [(task, e) for task in args.tasks for e in exits]
            for run_dir in pool.map(lambda j: one_exit(args.out, *j, args.n), evals):
                print(f"done {run_dir}", flush=True)
    text = tables(args.out, args.tasks, args.only, args.seeds, exits)
    (args.out / "frontier.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
