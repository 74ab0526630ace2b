"""The measured caveats of docs/policies.md ("Caveats, measured").

    .venv/bin/python benchmarks/caveats.py [--steps 600] [--n 256] [--out DIR] [--json]

1. ``coda``: an early-exited token's reported logits come from the coda run over every
   token's *exit* state, so they read neighbours that ran later than the exit decision. A
   ``confidence`` (CALM softmax) run with ``coda=1``: among the scored tokens that exited
   before N, how many reported predictions differ from the per-step readout the exit was
   decided on (and the same count with ``coda=0``, where it must be 0).
2. ``step embedding``: at initialisation the step embedding is N(0, 1) per component, as
   large as the state itself, so the state-change signals of LAC (norm deltas) and CALM's
   saturation (cosine of consecutive states) mostly see it. With an identity core (attention
   and MLP outputs zeroed) the state after step 1 is h⁰ + e₁: cos(h¹, h⁰) per token.
3. ``expected loss``: PonderNet/ANIRA train with every token running N steps (neighbours
   always running) but infer with halted neighbours frozen. A ``pondernet`` run: how many
   scored test predictions differ between the training semantics (all run N steps, the
   readout at the inference step) and the inference semantics.

Both runs: list_rank (``configs/demo_fixed.yaml``'s task and model) for ``--steps`` optimiser
steps, seed 0, one thread. Not a test: the figures depend on the training run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import ponder.models as models
import ponder.policies as policies
from ponder.eval.evaluate import load_run
from ponder.models.config import ModelConfig
from ponder.models.layers import AttnContext
from ponder.tasks.batching import IGNORE_INDEX, collate
from ponder.train.config import load_config
from ponder.train.trainer import train

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_fixed.yaml"


def trained(out: Path, name: str, overrides: list[str], steps: int):
    cfg = load_config(CONFIG, [*overrides, f"run.steps={steps}", "run.time_budget_s=null",
                               "run.stop_at_acc=null", "run.threads=1", f"schedule.total={steps}",
                               "run.eval_every=100000", "run.ckpt_every=100000"])
    run_dir = out / name
    train(cfg, run_dir, progress="none")
    return load_run(run_dir)


def test_batch(run, n: int):
    return collate([run.task.example("test", i) for i in range(n)], run.vocab)


@torch.no_grad()
def coda_caveat(run, batch) -> dict:
    model = run.model.eval()
    N = model.cfg.max_steps
    step_pred: list[torch.Tensor] = []
    real_step = model.policy.step

    def recording(memo, view):  # the readout each exit is decided on
        step_pred.append(view.logits().argmax(-1))
        return real_step(memo, view)

    model.policy.step = recording
    try:
        out = model(batch.tokens, batch.mask)
    finally:
        del model.policy.step
    scored = batch.targets != IGNORE_INDEX
    exited = scored & (out.halt_step < N)
    decided = torch.stack(step_pred, -1).gather(-1, (out.halt_step - 1).clamp(min=0)[..., None])[..., 0]
    reported = out.logits.argmax(-1)
    differ = exited & (decided != reported)
    return {"exits": int(exited.sum()), "differ": int(differ.sum()), "scored": int(scored.sum()),
            "accuracy_reported": float((reported == batch.targets)[scored].float().mean()),
            "accuracy_decided": float((decided == batch.targets)[scored].float().mean())}


@torch.no_grad()
def step_embedding_caveat(batch, vocab_size: int, d_model: int, seed: int) -> list[float]:
    torch.manual_seed(seed)
    cfg = ModelConfig(kind="recurrent", d_model=d_model, n_heads=4, d_ff=2 * d_model, prelude=1,
                      core=1, coda=0, max_steps=4, positions="none", execution="dense")
    model = models.build(cfg, policies.get("fixed"), vocab_size=vocab_size).eval()
    for block in model.core.blocks:  # an identity core: block(x) = x
        for lin in (block.attn.o, block.ffn.down):
            lin.weight.zero_()
            lin.bias.zero_()
    mask = batch.mask
    ctx = AttnContext.build(mask, causal=False)
    h0 = model.prelude(model.embed(batch.tokens), ctx)
    h1 = model.core(h0 + model.step_vector(1), ctx)
    cos = torch.nn.functional.cosine_similarity(h1, h0, dim=-1)[mask]
    return [float(cos.min()), float(cos.median()), float(cos.max())]


@torch.no_grad()
def expected_loss_caveat(run, batch) -> dict:
    model = run.model
    scored = batch.targets != IGNORE_INDEX
    model.eval()
    infer = model(batch.tokens, batch.mask)
    model.train()  # dropout is 0: the training semantics, deterministic
    trained_sem = model(batch.tokens, batch.mask)
    model.eval()
    a, b = infer.logits.argmax(-1), trained_sem.logits.argmax(-1)
    return {"scored": int(scored.sum()), "differ": int((scored & (a != b)).sum()),
            "halt_step_differs": int((scored & (infer.halt_step != trained_sem.halt_step)).sum()),
            "accuracy_infer": float((a == batch.targets)[scored].float().mean()),
            "accuracy_train_semantics": float((b == batch.targets)[scored].float().mean()),
            "mean_steps_infer": float(infer.steps[scored].float().mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n", type=int, default=256, help="test examples scored")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        result: dict = {"steps": args.steps}
        for coda in (1, 0):
            run = trained(out, f"confidence_coda{coda}",
                          ["policy.name=confidence", "policy.knobs={}", f"model.coda={coda}"], args.steps)
            result[f"coda{coda}"] = coda_caveat(run, test_batch(run, args.n))
        batch = test_batch(run, args.n)
        result["cos_h1_h0"] = {f"d{d}/seed{s}": step_embedding_caveat(batch, len(run.vocab), d, s)
                               for d in (64, 128) for s in (0, 1)}
        run = trained(out, "pondernet", ["policy.name=pondernet", "policy.knobs={}"], args.steps)
        result["pondernet"] = expected_loss_caveat(run, test_batch(run, args.n))
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
