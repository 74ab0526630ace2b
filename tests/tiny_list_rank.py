"""A tiny trained list_rank model for eval tests: its config and a direct forward to check
``ponder eval``'s figures against."""

from __future__ import annotations

import torch

import ponder.tasks
from ponder.eval.evaluate import load_run
from ponder.tasks import IGNORE_INDEX, collate

KNOBS = dict(m_min=2, m_max=4, ood_m_min=5, ood_m_max=6, n_labels=8)


def tiny_config(steps: int) -> list[str]:
    """Overrides of a d_model-16 fixed-depth (3 loops) list_rank model trained ``steps`` steps
    (checkpointed and evaluated at the end only)."""
    return ["task.name=list_rank", *[f"task.knobs.{k}={v}" for k, v in KNOBS.items()],
            "model.positions=none", "model.d_model=16", "model.n_heads=2", "model.d_ff=32",
            "model.max_steps=3", "policy.name=fixed", "run.batch_size=8", "run.valid_batches=1",
            f"run.steps={steps}", f"run.ckpt_every={steps}", f"run.eval_every={steps}",
            "schedule.warmup=2", "optim.lr=3e-3"]


def direct_forward(run_dir, split: str, steps: int, n: int) -> tuple[float, float]:
    """(token accuracy, mean steps over scored tokens) of the trained model's plain forward at
    ``steps`` loops on the first ``n`` examples of ``split``."""
    run = load_run(run_dir)
    task = ponder.tasks.get("list_rank", **KNOBS)
    batch = collate([task.example(split, i) for i in range(n)], run.vocab)
    with torch.no_grad():
        out = run.model(batch.tokens, batch.mask, steps=steps)
    scored = batch.targets != IGNORE_INDEX
    correct = (out.logits.argmax(-1) == batch.targets) & scored
    return int(correct.sum()) / int(scored.sum()), out.steps[scored].double().mean().item()
