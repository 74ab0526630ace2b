"""Mixture-of-Depths: how well a trained run's causal rule (the predictor, or the router's
own logit) agrees with the top-k routing it was trained against.

    .venv/bin/python benchmarks/mod_agreement.py RUN_DIR [--split valid] [--n 500]

Runs the run's model on ``n`` examples of the split in eval mode. For a model whose routers
route by top-k there (a non-causal model), every MoD router's top-k pick is compared with
the causal rule on the same block inputs (logit > 0) over the real tokens: agreement, the
fraction top-k routes and the fraction the rule would route, per routed block (for a causal
model at inference the rule decides: ``route/mod_agreement`` in the eval stats instead).
"""

from __future__ import annotations

import argparse

import torch

from ponder.eval.evaluate import load_run
from ponder.tasks import collate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    run = load_run(args.run)
    routers = [(name, m) for name, m in run.model.named_modules() if getattr(m, "name", "") == "mod"]
    if not routers:
        raise SystemExit(f"{args.run}: no Mixture-of-Depths router in this model")
    tally = {name: [0.0, 0.0, 0.0, 0.0] for name, _ in routers}  # agree, top-k, rule, count
    hooks = []
    for name, router in routers:
        def hook(module, inputs, route, name=name):
            x, candidates = inputs[0], inputs[1]
            rule_logit = (module.predictor(x) if module.predictor is not None else module.score(x)).squeeze(-1)
            rule = (rule_logit > 0) & candidates
            t = tally[name]
            t[0] += float(((rule == route.enter) & candidates).sum())
            t[1] += float(route.enter.sum())
            t[2] += float(rule.sum())
            t[3] += float(candidates.sum())
        hooks.append(router.register_forward_hook(hook))
    with torch.no_grad():
        for start in range(0, args.n, args.batch_size):
            examples = [run.task.example(args.split, i)
                        for i in range(start, min(start + args.batch_size, args.n))]
            batch = collate(examples, run.vocab)
            run.model(batch.tokens, batch.mask)
    for h in hooks:
        h.remove()
    print("| routed block | agreement | top-k routes | rule routes | token decisions |")
    print("|---|---:|---:|---:|---:|")
    for name, (agree, top, rule, count) in tally.items():
        print(f"| {name} | {agree / count:.3f} | {top / count:.3f} | {rule / count:.3f} | {int(count)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
