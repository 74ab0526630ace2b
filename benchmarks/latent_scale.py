"""The scale of the state-change statistics the convergence exits threshold, on a trained run.

    python benchmarks/latent_scale.py RUN_DIR [--split valid] [--n 200] [--steps 16]
        [--sweep T ...] [--sweep-n 500]

Runs the run's checkpoint at ``--steps`` loops with no token halting (the training-free
exits' statistics of every step are recorded, nothing is frozen) and prints, per step n, the
quantiles over real tokens of

- ``latent`` = ‖h^n − h^{n−1}‖ / ‖h^n‖          (``latent_exit``, default threshold 0.03 in Huginn)
- ``cosine`` = 1 − cos(h^n, h^{n−1})            (``cosine_exit``)
- ``residual`` = ‖h^n − h^{n−1}‖ / √D          (``fixed_point_exit``)
- ``kl`` = KL(p^{n−1} ‖ p^n), p^0 uniform       (``kl_exit``)
- ``‖h‖/√D`` (the state's RMS: the engine's state is the un-normalised residual stream)

and the fraction of tokens below each exit's default threshold. ``--sweep T ...`` then
evaluates the checkpoint under ``latent_exit:threshold=T`` for each T (``ponder eval --policy``,
into ``RUN_DIR/policies/``) and prints valid/ood accuracy, mean steps and ρ(steps, complexity).
Docs: docs/results/frontier.md.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from ponder.eval.evaluate import load_run
from ponder.policies import convergence as conv
from ponder.policies.base import Decision
from ponder.tasks import collate
from ponder.train.config import PolicyConfig

QUANTILES = (0.1, 0.5, 0.9)


def measure(run_dir: str, split: str, n: int, steps: int) -> dict[str, list[torch.Tensor]]:
    """Per statistic, one [tokens] tensor per step 1..steps (real tokens only)."""
    run = load_run(run_dir, policy=PolicyConfig(name="latent_exit", knobs={"threshold": 0.0}))
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in ("latent", "cosine", "residual", "kl", "rms")}
    memo_p: dict[str, torch.Tensor | None] = {"log_p": None}
    mask_of: dict[str, torch.Tensor] = {}

    def step(memo, view):  # records, never halts (threshold 0 would not either)
        m = view.mask
        mask_of["m"] = m
        stats["latent"].append(conv.relative_change(view.h, view.prev)[m])
        stats["cosine"].append(conv.cosine_distance(view.h, view.prev)[m])
        stats["residual"].append((conv.norm(conv.difference(view.h, view.prev)) / math.sqrt(view.h.shape[-1]))[m])
        stats["rms"].append((conv.norm(view.h) / math.sqrt(view.h.shape[-1]))[m])
        log_p = conv.log_probs(view.logits())
        prev = memo_p["log_p"]
        if prev is None:
            prev = torch.full_like(log_p, -math.log(log_p.shape[-1]))
        stats["kl"].append(conv.kl(prev, log_p)[m])
        memo_p["log_p"] = log_p
        return Decision(halt=torch.zeros_like(m))

    run.model.policy.step = step
    batch = collate([run.task.example(split, i) for i in range(n)], run.vocab)
    torch.set_num_threads(1)
    with torch.no_grad():
        run.model(batch.tokens, batch.mask, steps=steps)
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--split", default="valid")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--sweep", nargs="*", type=float, default=[])
    p.add_argument("--sweep-n", type=int, default=500)
    args = p.parse_args()
    stats = measure(args.run_dir, args.split, args.n, args.steps)
    defaults = {"latent": 0.03, "cosine": 1e-3, "residual": 0.01, "kl": 1e-3}
    print(f"{args.run_dir} · {args.split} · {args.n} examples · quantiles {QUANTILES} over tokens")
    head = " | ".join(f"{k} q10/q50/q90 (< {defaults[k]:g})" for k in defaults)
    print(f"| n | {head} | ‖h‖/√D q50 |")
    print("|---|" + "---|" * (len(defaults) + 1))
    for i in range(args.steps):
        cells = []
        for k, thr in defaults.items():
            x = stats[k][i].double()
            q = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
            cells.append(f"{q[0]:.3g} / {q[1]:.3g} / {q[2]:.3g} ({(x < thr).double().mean().item():.0%})")
        rms = stats["rms"][i].double().median().item()
        print(f"| {i + 1} | " + " | ".join(cells) + f" | {rms:.3g} |")
    if args.sweep:
        sweep(args.run_dir, args.sweep, args.sweep_n)
    return 0


def sweep(run_dir: str, thresholds: list[float], n: int) -> None:
    from ponder.analysis import alignment
    from ponder.analysis.load import load
    from ponder.eval.evaluate import evaluate_run, policy_slug

    print(f"\nlatent_exit thresholds on {run_dir} ({n} examples per split):\n")
    print("| threshold | valid acc | valid mean steps | ρ(steps, complexity) valid | ood acc | ood mean steps |")
    print("|---|---|---|---|---|---|")
    for t in thresholds:
        spec = PolicyConfig(name="latent_exit", knobs={"threshold": t})
        s = evaluate_run(run_dir, n=n, policy=spec)
        rho = alignment.analyse_split(load(f"{run_dir}/policies/{policy_slug(spec)}").split("valid"), seed=0)["rho"]
        rho_text = "–" if rho is None else f"{rho:.3f}"
        print(f"| {t:g} | {s['valid']['token_acc']:.3f} | {s['valid']['mean_steps']:.2f} | {rho_text} | "
              f"{s['ood']['token_acc']:.3f} | {s['ood']['mean_steps']:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
