"""Slow, obviously correct references shared by several test files."""

from __future__ import annotations

import math

import torch


def slow_block(block, x, mask, enter, weight, *, causal: bool, routed_keys: bool):
    """x [B, L, D] → block output by the definitions, one token at a time: entering tokens
    attend to the real tokens (the entering ones only with routed keys; up to themselves when
    causal) and are updated x + w·(block(x) − x); the others pass unchanged. Softmax attention
    (``standard``) or NDR's geometric attention (:func:`slow_geometric_head`); the plain
    residual or NDR's copy gate (``block.gate``)."""
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
                kvs = {j: attn.kv(y[b, j]).view(2, H, hd)[:, hh] for j in keys}
                if attn.weights == "geometric":
                    beta = attn.beta(y[b, i]).view(H, 2)[hh]
                    heads.append(slow_geometric_head(q[hh], kvs, i, beta, attn.normalize))
                    continue
                s = torch.stack([q[hh] @ kv[0] for kv in kvs.values()]) / math.sqrt(hd)
                w = torch.softmax(s, 0)
                heads.append(sum(wj * kv[1] for wj, kv in zip(w, kvs.values())))
            h1 = x[b, i] + attn.o(torch.cat(heads))
            if block.gate is None:
                out = h1 + block.ffn(block.norm2(h1))
            else:  # NDR: the gate from the attention-updated state picks update or copy
                n = block.norm2(h1)
                g = torch.sigmoid(block.gate(n))
                out = g * block.ffn(n) + (1 - g) * x[b, i]
            seq.append(x[b, i] + weight[b, i] * (out - x[b, i]))
        rows.append(torch.stack(seq))
    return torch.stack(rows)


def slow_geometric_head(q, kvs: dict, i: int, beta, normalize: bool):
    """One head of geometric attention for query position i by the definition: keys ``kvs``
    {position j: (k_j, v_j)} (the visible ones); P_j = σ(q·k_j/√hd + β_back if j < i else
    β_front); A_j = P_j ∏ (1 − P_k) over the visible keys k closer to i than j, plus, for a
    key on the left, the one at the same distance on the right (scanned first). → Σ_j A_j v_j."""
    hd = q.shape[0]
    P = {j: torch.sigmoid(q @ k / math.sqrt(hd) + (beta[0] if j < i else beta[1]))
         for j, (k, _) in kvs.items() if j != i}
    A = {}
    for j, p in P.items():
        d = abs(j - i)
        a = p
        for k, pk in P.items():
            if abs(k - i) < d or (j < i and k == i + d):
                a = a * (1 - pk)
        A[j] = a
    if normalize and A:
        total = sum(A.values())
        A = {j: a / total.clamp(min=1e-12) for j, a in A.items()}
    out = torch.zeros_like(q)
    for j, a in A.items():
        out = out + a * kvs[j][1]
    return out


def slow_soft_top_k(s: list, k: float, kn) -> list:
    """CoLT5's soft top-k (``ponder.models.colt5.soft_top_k``): the coordinate descent on one
    sequence's scores, scalar by scalar; ``kn`` the routing knobs."""
    e = max(kn.eps_init, kn.eps)
    b = [-max(x, 0.0) for x in s]
    a = 0.0
    for _ in range(kn.iters):
        a = e * (math.log(k) - torch.logsumexp(torch.stack([(si + bi) / e for si, bi in zip(s, b)]), 0))
        b = [-torch.relu(si + a) for si in s]
        e = max(e * kn.eps_decay, kn.eps)
    return [torch.exp((si + a + bi) / e) for si, bi in zip(s, b)]


def slow_route(scores: list, kn) -> dict:
    """CoLT5's routing of one sequence (``ponder.models.colt5.soft_route``) by the
    definition: scores [n] scalars → {index: multiplier} for the k = ⌈capacity·n⌉ best (ties:
    the earlier first); the multiplier is the soft top-k score run for k·fetch_ratio tokens,
    straight through (1 forward, its gradient backward) when ``kn.straight_through``."""
    n = len(scores)
    k = max(1, math.ceil(round(kn.capacity * n, 9)))
    fetch = min(math.ceil(round(k * kn.fetch_ratio, 9)), n)
    z = slow_soft_top_k(scores, fetch, kn)
    best = sorted(range(n), key=lambda j: (-float(scores[j].detach()), j))[:k]
    return {j: z[j] - z[j].detach() + 1.0 if kn.straight_through else z[j] for j in best}


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
