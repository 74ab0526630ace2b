"""``ponder generate RUN_DIR --split S --n N``: generated answers of an LM-view run, with the
compute (core steps, FLOPs) and the correctness of every generated token.

Writes ``RUN_DIR/generate/<split>.jsonl`` (one example per line: index, prompt, answer,
generated, per-token ``steps`` / ``flops`` / ``correct`` / ``complexity``, ``exact``) and
``RUN_DIR/generate/<split>.summary.json``, both atomically.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ponder.errors import ConfigError

FILLS = ("propagate", "recompute")


def generate_split(run_dir: str | Path, split: str, *, n: int, batch_size: int, max_new: int,
                   sampling, seed: int, exit_text: str | None, fill: str, log=print) -> dict:
    import torch

    from ponder.eval.evaluate import load_run
    from ponder.generate.exits import parse_exit
    from ponder.generate.loop import generate
    from ponder.tasks.base import SPLITS
    from ponder.tasks.lm import EOS, LMView
    from ponder.train.checkpoint import atomic_write_text

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n < 1 or batch_size < 1 or max_new < 1:
        raise ConfigError("--n, --batch-size and --max-new must be at least 1")
    if fill not in FILLS:
        raise ConfigError(f"unknown fill {fill!r}; fills: {', '.join(FILLS)}")
    run = load_run(run_dir)
    if not isinstance(run.task, LMView):
        raise ConfigError(f"run {str(run_dir)!r} is not an LM-view run (train it with task.lm=true)")
    rule = parse_exit(exit_text, run.model.policy) if exit_text else None
    vocab, model = run.vocab, run.model
    eos = vocab.stoi[EOS]
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    t0 = time.perf_counter()
    n_tokens = 0
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        items = [run.task.prompt(split, i) for i in idx]
        prompts = [vocab.encode(p) for p, _, _ in items]
        out = generate(model, prompts, max_new=max_new, eos=eos, sampling=sampling, rule=rule,
                       fill=fill, generator=gen, pad=vocab.pad_id)
        for j, i in enumerate(idx):
            prompt, answer, costs = items[j]
            written = vocab.decode(out.tokens[j])
            correct = [k < len(answer) and written[k] == answer[k] for k in range(len(written))]
            rows.append({"index": i, "prompt": prompt, "answer": answer, "generated": written,
                         "exact": written == answer, "correct": correct,
                         "complexity": [costs[k] if k < len(costs) else None for k in range(len(written))],
                         "steps": out.steps[j], "flops": out.flops[j]})
            n_tokens += len(written)
    seconds = time.perf_counter() - t0
    tokens = [t for r in rows for t in range(len(r["generated"]))]
    summary = {
        "split": split, "n": len(rows), "max_new": max_new, "batch_size": batch_size,
        "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k,
                     "top_p": sampling.top_p, "seed": seed},
        "exit": exit_text, "fill": fill if exit_text else None,
        "exact_match": sum(r["exact"] for r in rows) / len(rows),
        # answer tokens written correctly at their place, over all answer tokens (EOS included)
        "token_accuracy": (sum(c for r in rows for c in r["correct"])
                           / max(1, sum(len(r["answer"]) for r in rows))),
        "mean_steps": sum(s for r in rows for s in r["steps"]) / max(1, len(tokens)),
        "flops_per_token": sum(f for r in rows for f in r["flops"]) / max(1, len(tokens)),
        "max_steps": model.cfg.max_steps, "tokens": n_tokens, "seconds": seconds,
        "tokens_per_s": n_tokens / seconds if seconds > 0 else None,
    }
    out_dir = Path(run_dir) / "generate"
    atomic_write_text(out_dir / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out_dir / f"{split}.summary.json", json.dumps(summary, indent=2) + "\n")
    log(f"{split}: exact match {summary['exact_match']:.3f}, token accuracy "
        f"{summary['token_accuracy']:.3f}, mean steps {summary['mean_steps']:.2f}/{model.cfg.max_steps} "
        f"→ {out_dir / (split + '.jsonl')}")
    return summary


def run(args: argparse.Namespace) -> int:
    from ponder.generate.sampling import Sampling

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    for split in args.split or ["valid"]:
        generate_split(args.run_dir, split, n=args.n, batch_size=args.batch_size,
                       max_new=args.max_new, sampling=sampling, seed=args.seed,
                       exit_text=args.exit, fill=args.fill)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate the answers of an LM-view run",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", action="append", metavar="S", help="split (repeatable; default valid)")
    p.add_argument("--n", type=int, default=64, help="examples per split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new", type=int, default=64, help="most tokens generated per example")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exit", default=None, metavar="RULE",
                   help="per-token exits: MEASURE:THRESHOLD[:decay] (softmax, saturation, "
                        "classifier) or 'policy' (the run's confidence policy)")
    p.add_argument("--fill", default="propagate", help="skipped slots' keys/values: propagate | recompute")
    p.set_defaults(func=run)
