"""Training memory of one step: ponder's block stack against ``nn.TransformerEncoder``.

    .venv/bin/python benchmarks/norm_memory.py [--d-model 128] [--seq 64] [--batch 32] [--layers 4]
                                               [--kind stacked|recurrent] [--json]

Three models of the same shape (pre-norm, GELU MLP of 4·d, no dropout, token embedding, a
final norm and a linear head; ``--layers`` blocks): ``nn.TransformerEncoder`` (its LayerNorm is
one fused kernel); ponder's stacked model (``--kind recurrent``: the weight-shared one, with its
step embedding) under the ``fixed`` policy (prelude 0, coda 0: the same block count) with the fused RMSNorm of ``ponder.models.norm``; and the same with the
composite RMSNorm (the plain-op formula, as before the fused one).

Two measures per model:
- ``saved_mb``: bytes the forward pass keeps for the backward pass (unique storages seen by
  ``torch.autograd.graph.saved_tensors_hooks``);
- ``peak_mb``: the peak of the bytes the PyTorch allocator holds during one forward +
  backward, from the profiler's memory timeline (``torch.profiler`` with ``profile_memory``;
  ``MemoryProfileTimeline`` is a private API of torch 2.x). Exact and repeatable, unlike
  the process's peak resident size, which moves by ±5% with the C allocator's caching.
  Includes the gradients (parameter counts differ slightly: ponder's attention has biases
  and a joint k/v projection).
Not a test: peak RSS depends on the allocator and the machine.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import MemoryProfileTimeline

import ponder.models as models
import ponder.models.layers as layers
import ponder.policies as policies
from ponder.models.config import ModelConfig

VOCAB = 16


class TorchEncoder(nn.Module):
    def __init__(self, d: int, heads: int, n_layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.norm(self.encoder(self.embed(tokens))))
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def composite_forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def build(kind: str, args):
    torch.manual_seed(0)
    if kind == "torch":
        model = TorchEncoder(args.d_model, 4, args.layers).train()
        return model, lambda t, y: model.loss(t, y)
    if kind == "ponder-composite":
        layers.RMSNorm.forward = composite_forward
    cfg = ModelConfig(kind=args.kind, d_model=args.d_model, n_heads=4, d_ff=4 * args.d_model,
                      prelude=0, core=1, coda=0, max_steps=args.layers, positions="none",
                      execution="dense")
    model = models.build(cfg, policies.get("fixed"), vocab_size=VOCAB).train()
    mask = torch.ones(args.batch, args.seq, dtype=torch.bool)

    def loss(t, y):
        return model.loss(model(t, mask), y)[0]
    return model, loss


def measure(kind: str, args) -> dict:
    model, loss_fn = build(kind, args)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (args.batch, args.seq), generator=g)
    targets = torch.randint(0, VOCAB, (args.batch, args.seq), generator=g)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn(tokens, targets)
        loss.backward()
        del loss
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    peak = max(sum(row) for row in sizes)
    return {"model": kind, "saved_mb": round(sum(storages.values()) / 2**20, 3),
            "peak_mb": round(peak / 2**20, 3), "params": sum(p.numel() for p in model.parameters())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--kind", choices=("stacked", "recurrent"), default="stacked",
                        help="ponder's model kind (recurrent: one shared block, a step embedding)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fused = layers.RMSNorm.forward
    rows = []
    try:
        for kind in ("torch", "ponder", "ponder-composite"):
            rows.append(measure(kind, args))
    finally:
        layers.RMSNorm.forward = fused
    base = rows[0]
    for row in rows:
        row["saved_vs_torch"] = round(row["saved_mb"] / base["saved_mb"], 3)
        row["peak_vs_torch"] = round(row["peak_mb"] / base["peak_mb"], 3)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"d_model={args.d_model} seq={args.seq} batch={args.batch} layers={args.layers}")
        print(f"{'model':18} {'saved MB':>9} {'× torch':>8} {'peak MB':>9} {'× torch':>8} {'params':>8}")
        for r in rows:
            print(f"{r['model']:18} {r['saved_mb']:9.2f} {r['saved_vs_torch']:8.3f} "
                  f"{r['peak_mb']:9.2f} {r['peak_vs_torch']:8.3f} {r['params']:8d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
