"""CoLT5's conditional attention (``model.attention.kind: colt5``) against a slow loop over
sequences, queries and keys (float64, pads in the batch), forward, FLOPs and gradients
(and gradcheck on a tiny case); the light window; k = ⌈capacity·n⌉ routed queries and keys;
pads never routed nor attended; refused by a causal model (one line, exit 2) and when its
heads do not fit d_model. Dense = compacted execution: tests/models/test_block_kinds.py."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
from ponder.cli import main
from ponder.errors import ConfigError
from ponder.models.colt5_attention import CoLT5Attention, CoLT5AttentionKnobs
from ponder.models.config import KindConfig, ModelConfig
from ponder.models.layers import AttnContext
from ponder.policies.fixed import Fixed
from tests.references import slow_route

B, L, D, H = 3, 9, 16, 2


def make(seed: int = 0, **knobs) -> CoLT5Attention:
    torch.manual_seed(seed)
    return CoLT5Attention(d_model=D, n_heads=H, knobs=CoLT5AttentionKnobs(**knobs)).double()


def batch_mask() -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    return mask


def slow_colt5(attn: CoLT5Attention, y: torch.Tensor, mask: torch.Tensor):
    """By the definition, one query and one key at a time → (out {(b, i): [D]} at the real
    tokens, FLOPs {(b, i): float} of their attention)."""
    kn = attn.knobs
    dl, dh, Dl = attn.light_dim, attn.head_dim, attn.Dl
    inner = Dl + attn.Dh
    out, flops = {}, {}
    for b in range(y.shape[0]):
        real = [j for j in range(y.shape[1]) if mask[b, j]]
        q = {i: attn.q(y[b, i]) for i in real}
        k = {j: attn.kv(y[b, j])[:inner] for j in real}
        v = {j: attn.kv(y[b, j])[inner:] for j in real}
        s = {j: attn.route(y[b, j]) for j in real}
        routed_q = {real[n]: m for n, m in slow_route([s[j][0] for j in real], kn).items()}
        routed_k = {real[n]: m for n, m in slow_route([s[j][1] for j in real], kn).items()}
        for i in real:
            near = [j for j in real if abs(i - j) <= kn.window]
            heads = []
            for h in range(attn.Hl):
                c = slice(h * dl, (h + 1) * dl)
                w = torch.softmax(torch.stack([q[i][c] @ k[j][c] for j in near]) / math.sqrt(dl), 0)
                heads.append(sum(wj * v[j][c] for wj, j in zip(w, near)))
            for h in range(attn.Hh):
                c = slice(Dl + h * dh, Dl + (h + 1) * dh)
                if i not in routed_q:
                    heads.append(torch.zeros(dh, dtype=y.dtype))
                    continue
                keys = sorted(routed_k)
                w = torch.softmax(torch.stack([q[i][c] @ k[j][c] for j in keys]) / math.sqrt(dh), 0)
                heads.append(routed_q[i] * sum(wj * routed_k[j] * v[j][c] for wj, j in zip(w, keys)))
            out[b, i] = attn.o(torch.cat(heads))
            flops[b, i] = 4.0 * Dl * len(near) + (4.0 * attn.Dh * len(routed_k) if i in routed_q else 0.0)
    return out, flops


@pytest.mark.parametrize("straight", [True, False])
@pytest.mark.parametrize("window", [0, 2, 100])
def test_colt5_attention_equals_slow_loop(window, straight):
    # a large final ε: soft scores well inside (0, 1), so the scales matter
    attn = make(capacity=0.4, window=window, straight_through=straight, eps=0.5)
    mask = batch_mask()
    g = torch.Generator().manual_seed(3)
    y = torch.randn(B, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    ctx = AttnContext.build(mask, causal=False)
    ctx.flops = torch.zeros(B, L, dtype=torch.float64)
    fast = attn(y, ctx)
    ref, ref_flops = slow_colt5(attn, y, mask)
    slow = torch.stack([ref[b, i] for b in range(B) for i in range(L) if mask[b, i]])
    torch.testing.assert_close(fast[mask], slow, atol=1e-10, rtol=1e-10)
    # FLOPs: the attention's per query, the projections' are counted by the block
    expected = torch.tensor([ref_flops[b, i] for b in range(B) for i in range(L) if mask[b, i]],
                            dtype=torch.float64)
    torch.testing.assert_close(ctx.flops[mask], expected)
    assert not bool(ctx.flops[~mask].any())  # pads are not charged
    R = torch.randn(slow.shape, generator=g, dtype=torch.float64)
    params = list(attn.parameters()) + [y]
    for a, b in zip(torch.autograd.grad((fast[mask] * R).sum(), params),
                    torch.autograd.grad((slow * R).sum(), params, allow_unused=True)):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, atol=1e-9, rtol=1e-9)


def test_colt5_attention_gradcheck():
    torch.manual_seed(0)
    attn = CoLT5Attention(d_model=8, n_heads=2, knobs=CoLT5AttentionKnobs(
        capacity=0.5, window=1, iters=5, straight_through=False)).double()
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    ctx = AttnContext.build(mask, causal=False)
    y = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attn(t, ctx)[mask], (y,), eps=1e-6, atol=1e-6)


def grid_parts(attn: CoLT5Attention, y: torch.Tensor, mask: torch.Tensor):
    """attend_grid's output of y [B, L, D] → (light [B, L, Dl], heavy [B, L, Dh], FLOPs [B, L])."""
    Bn, Ln, _ = y.shape
    rows = y.reshape(Bn * Ln, D)
    q = attn.queries(rows, None).view(Bn, Ln, H, -1).transpose(1, 2)
    kv = attn.keys_values(rows, None).view(Bn, Ln, 2, H, -1)
    ctx = AttnContext.build(mask, causal=False)
    a = attn.attend_grid(q, kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2), ctx.attn_mask, 0.0)
    a = a.transpose(1, 2).reshape(Bn, Ln, D)
    return a[..., :attn.Dl], a[..., attn.Dl:attn.Dl + attn.Dh], a[..., -1]


def test_window_and_pads():
    """Light: query i reads the real keys within the window only; pads are never attended
    (changing them changes no real token's output) and never routed."""
    attn = make(window=2, capacity=0.5)
    mask = batch_mask()
    g = torch.Generator().manual_seed(4)
    y = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    light, heavy, _ = grid_parts(attn, y, mask)
    far = y.clone()
    far[0, 7] += 1.0                      # 3 positions from query 4, within 2 of query 5
    light2, _, _ = grid_parts(attn, far, mask)
    assert torch.equal(light2[0, 4], light[0, 4]) and not torch.equal(light2[0, 5], light[0, 5])
    padded = y.clone()
    padded[~mask] = 100.0 * torch.randn(int((~mask).sum()), D, generator=g, dtype=torch.float64)
    light3, heavy3, _ = grid_parts(attn, padded, mask)
    torch.testing.assert_close(light3[mask], light[mask], atol=1e-12, rtol=0)
    torch.testing.assert_close(heavy3[mask], heavy[mask], atol=1e-12, rtol=0)
    assert not bool(heavy3[~mask].any())
    # window 0: the light branch of every real token is its own light value
    own = make(window=0)
    light0, _, _ = grid_parts(own, y, mask)
    v = own.kv(y)[..., own.Dl + own.Dh:own.Dl + own.Dh + own.Dl]
    torch.testing.assert_close(light0[mask], v[mask], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("capacity", [0.001, 0.25, 0.5, 1.0])
def test_k_is_ceil_capacity_n(capacity):
    """⌈capacity·n⌉ routed queries per sequence get a heavy output (n its real tokens), each
    charged 4·Dh FLOPs per routed key, and ⌈capacity·n⌉ keys are routed."""
    attn = make(capacity=capacity, window=0)
    mask = batch_mask()
    y = torch.randn(B, L, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, heavy, flops = grid_parts(attn, y, mask)
    n = mask.sum(1)
    k = [max(1, math.ceil(round(capacity * int(m), 9))) for m in n]
    routed = heavy.abs().sum(-1) > 0
    assert routed.sum(1).tolist() == k and not bool((routed & ~mask).any())
    heavy_flops = flops - 4.0 * attn.Dl          # window 0: one light key per query
    for b in range(B):
        assert sorted(set(heavy_flops[b][mask[b]].tolist())) == sorted({0.0, 4.0 * attn.Dh * k[b]} - (
            {0.0} if k[b] == int(n[b]) else set()))


def test_colt5_attention_in_a_model_counts_flops_alike_dense_and_compact():
    flops = {}
    for execution in ("dense", "compact"):
        cfg = ModelConfig(kind="stacked", d_model=D, n_heads=H, d_ff=32, prelude=0, coda=0,
                          max_steps=2, positions="rotary", execution=execution,
                          attention=KindConfig(kind="colt5", knobs={"capacity": 0.25, "window": 1}),
                          ffn=KindConfig(kind="colt5"))
        torch.manual_seed(0)
        model = models.build(cfg, Fixed(), vocab_size=9).eval()
        tokens = torch.randint(0, 9, (3, 8), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            flops[execution] = model(tokens, batch_mask()[:, :8]).flops
    torch.testing.assert_close(flops["compact"], flops["dense"])
    assert flops["dense"][batch_mask()[:, :8]].min() > 0


def test_refusals(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "model.causal=true", "model.attention.kind=colt5", "run.steps=1",
                 "--out", str(out), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "not causal" in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="do not fit"):   # 4 light + 8 heavy + 2 scores > 8
        CoLT5Attention(d_model=8, n_heads=1)
    with pytest.raises(ConfigError, match="even"):
        CoLT5Attention(d_model=16, n_heads=2, knobs=CoLT5AttentionKnobs(light_head_dim=3))
