"""Slow, obviously correct references shared by several test files."""

from __future__ import annotations

import math

import torch


def slow_block(block, x, mask, enter, weight, *, causal: bool, routed_keys: bool):
    """x [B, L, D] → block output by the definitions, one token at a time: entering tokens
    attend to the real tokens (the entering ones only with routed keys; up to themselves when
    causal) and are updated x + w·(block(x) − x); the others pass unchanged."""
    attn, H, hd = block.attn, block.attn.n_heads, block.attn.head_dim
    B, L, D = x.shape
    y = block.norm1(x)
    rows = []
    for b in range(B):
        seq = []
        for i in range(L):
            if not enter[b, i]:
                seq.append(x[b, i])
                continue
            keys = [j for j in range(L) if mask[b, j] and (not causal or j <= i)
                    and (not routed_keys or enter[b, j] or j == i)]
            q = attn.q(y[b, i]).view(H, hd)
            heads = []
            for hh in range(H):
                kvs = [attn.kv(y[b, j]).view(2, H, hd)[:, hh] for j in keys]
                s = torch.stack([q[hh] @ kv[0] for kv in kvs]) / math.sqrt(hd)
                w = torch.softmax(s, 0)
                heads.append(sum(wj * kv[1] for wj, kv in zip(w, kvs)))
            h1 = x[b, i] + attn.o(torch.cat(heads))
            out = h1 + block.ffn(block.norm2(h1))
            seq.append(x[b, i] + weight[b, i] * (out - x[b, i]))
        rows.append(torch.stack(seq))
    return torch.stack(rows)


def train_killed_at(cfg, run_dir, monkeypatch, *, call: int) -> None:
    """Run ``ponder.train.train`` and kill it (KeyboardInterrupt) at its ``call``-th training
    step, as a user's Ctrl-C would; the trainer's step is restored afterwards."""
    import pytest

    from ponder.train.trainer import Trainer, train

    real = Trainer._train_step
    calls = {"n": 0}

    def dies(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, progress="none")
    monkeypatch.setattr(Trainer, "_train_step", real)
