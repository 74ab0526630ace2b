"""The compiled kernels (``ponder.kernels``) against slow, obviously correct references.

On a machine with a C++ compiler the kernels must build (``load()`` True); without one,
``load()`` must say False (with a warning) and everything else keeps the PyTorch path — the
only case in which these comparisons do not run, and the test then checks exactly that.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import ponder.kernels as kernels


def built() -> bool:
    ok = kernels.load()
    if not ok:
        assert shutil.which(os.environ.get("CXX", "c++")) is None, \
            "a C++ compiler is present but the kernels did not build"
    return ok


def reference_attention(q, k, v, rows, L, key_mask, causal):
    """Per query and head: softmax over the keys it may see (its sequence's real tokens,
    itself, and with causality none after it), plain PyTorch in float64."""
    B, H, _, hd = k.shape
    out = torch.empty(q.shape, dtype=torch.float64)
    for t, r in enumerate(rows.tolist()):
        b, pos = divmod(r, L)
        allowed = key_mask[b].clone()
        allowed[pos] = True
        if causal:
            allowed[pos + 1:] = False
        for h in range(H):
            cols = slice(h * hd, (h + 1) * hd)
            scores = (k[b, h, :L].double() @ q[t, cols].double()) * hd ** -0.5
            p = scores.masked_fill(~allowed, float("-inf")).softmax(0)
            out[t, cols] = p @ v[b, h, :L].double()
    return out


@pytest.mark.parametrize("hd", kernels.HEAD_DIMS)
@pytest.mark.parametrize("L", [1, 5, 16, 23])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("pads", [False, True], ids=["no-pads", "pads"])
def test_varlen_attention_matches_reference(hd, L, causal, pads):
    if not built():
        return
    g = torch.Generator().manual_seed(hd * 100 + L)
    B, H = 5, 2
    key_mask = torch.rand(B, L, generator=g) < 0.7 if pads else torch.ones(B, L, dtype=torch.bool)
    active = (torch.rand(B, L, generator=g) < 0.6) & key_mask
    active[1] = key_mask[1]            # a sequence with every token a query
    active[2] = False                  # one with none
    rows = active.view(-1).nonzero().view(-1)
    starts = torch.zeros(B + 1, dtype=torch.long)
    starts[1:] = active.sum(1).cumsum(0)
    q = torch.randn(rows.numel(), H * hd, generator=g)
    # keys/values as views into a longer buffer whose extra positions are NaN: the kernel must
    # never read past L (a NaN there would reach the output)
    buf = torch.full((2, B, H, L + 16, hd), float("nan"))
    buf[:, :, :, :L] = torch.randn(2, B, H, L, hd, generator=g)
    k, v = buf[0, :, :, :L], buf[1, :, :, :L]
    y = kernels.varlen_attention(q, k, v, starts, pos=rows % L if causal else None,
                                 key_mask=key_mask if pads else None)
    ref = reference_attention(q, k, v, rows, L, key_mask, causal)
    torch.testing.assert_close(y.double(), ref, atol=2e-6, rtol=2e-5)


def test_varlen_attention_reads_strided_keys_values_and_uses_both_threads():
    """Keys/values as the permuted view of a token-major projection (how a full-refresh step
    passes them), at one and two threads."""
    if not built():
        return
    g = torch.Generator().manual_seed(0)
    B, L, H, hd = 6, 40, 4, 32
    kv_rows = torch.randn(B * L, 2 * H * hd, generator=g)
    kv = kv_rows.view(B, L, 2, H, hd).permute(2, 0, 3, 1, 4)
    active = torch.rand(B, L, generator=g) < 0.5
    rows = active.view(-1).nonzero().view(-1)
    starts = torch.zeros(B + 1, dtype=torch.long)
    starts[1:] = active.sum(1).cumsum(0)
    q = torch.randn(rows.numel(), H * hd, generator=g)
    ref = reference_attention(q, kv[0], kv[1], rows, L, torch.ones(B, L, dtype=torch.bool), False)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = kernels.varlen_attention(q, kv[0], kv[1], starts)
            torch.testing.assert_close(y.double(), ref, atol=2e-6, rtol=2e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("with_src", [False, True], ids=["in-order", "src-rows"])
def test_write_kv_matches_reference(with_src):
    if not built():
        return
    g = torch.Generator().manual_seed(1)
    B, H, L, hd = 3, 2, 7, 8
    cache = torch.randn(2, B, H, L, hd, generator=g)
    expect = cache.clone()
    tokens = torch.randperm(B * L, generator=g)[:9]
    kv = torch.randn(12, 2 * H * hd, generator=g)
    src = torch.randperm(12, generator=g)[:9] if with_src else None
    for i, tok in enumerate(tokens.tolist()):
        b, l = divmod(tok, L)
        row = kv[src[i] if with_src else i]
        for part in range(2):
            for h in range(H):
                expect[part, b, h, l] = row[(part * H + h) * hd:(part * H + h + 1) * hd]
    torch.ops.ponder_kernels.write_kv(cache, tokens, kv if with_src else kv[:9], src)
    assert torch.equal(cache, expect)


def test_copy_rows_equals_index_copy():
    if not built():
        return
    g = torch.Generator().manual_seed(2)
    dst = torch.randn(5000, 24, generator=g)
    rows = torch.randperm(5000, generator=g)[:3100]
    src = torch.randn(3100, 24, generator=g)
    expect = dst.clone().index_copy_(0, rows, src)
    torch.ops.ponder_kernels.copy_rows(dst, rows, src)
    assert torch.equal(dst, expect)


def test_bad_shapes_are_refused():
    if not built():
        return
    q = torch.randn(4, 16)
    kv = torch.randn(2, 2, 2, 5, 8)
    with pytest.raises(RuntimeError, match="head_dim"):
        kernels.varlen_attention(torch.randn(4, 12), torch.randn(2, 2, 5, 6), torch.randn(2, 2, 5, 6),
                                 torch.tensor([0, 2, 4]))
    with pytest.raises(RuntimeError, match="shapes"):
        kernels.varlen_attention(q, kv[0], kv[1], torch.tensor([0, 4]))
    with pytest.raises(RuntimeError, match="starts"):
        kernels.varlen_attention(q, kv[0], kv[1], torch.tensor([0, 1, 3]))
    with pytest.raises(RuntimeError, match="starts"):
        kernels.varlen_attention(q, kv[0], kv[1], torch.tensor([0, 5, 4]))
    with pytest.raises(RuntimeError, match="key_mask"):
        kernels.varlen_attention(q, kv[0], kv[1], torch.tensor([0, 2, 4]),
                                 key_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="write_kv"):
        torch.ops.ponder_kernels.write_kv(kv, torch.tensor([0, 1]), torch.randn(2, 7), None)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.ponder_kernels.write_kv(kv, torch.tensor([0, 99]), torch.randn(2, 32), None)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.ponder_kernels.copy_rows(torch.zeros(3, 4), torch.tensor([3]), torch.ones(1, 4))


def test_switched_off_by_the_environment(monkeypatch):
    """PONDER_KERNELS=0: load() says False, without building anything."""
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("PONDER_KERNELS", "0")
    assert kernels.load() is False


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("rope", [False, True], ids=["no-rope", "rope"])
@pytest.mark.parametrize("pads", [False, True], ids=["no-pads", "pads"])
def test_dispatched_full_pass_equals_reference_blocks(causal, rope, pads, monkeypatch):
    """A full pass through the dispatcher (``dispatch.run_group``: the compiled kernel at
    inference, taken only without pads) gives what the blocks' plain-PyTorch reference gives."""
    from ponder.models import dispatch
    from ponder.models.layers import AttnContext, BlockSpec, Group, Rotary
    torch.manual_seed(0)
    group = Group(n_blocks=2, spec=BlockSpec(d_model=64, n_heads=4, d_ff=128)).eval()
    mask = torch.ones(3, 13, dtype=torch.bool)
    if pads:
        mask[1, 9:] = False
    ctx = AttnContext.build(mask, causal=causal, rope=Rotary(head_dim=16) if rope else None)
    x = torch.randn(3, 13, 64)
    calls = []
    real = kernels.varlen_attention

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(kernels, "varlen_attention", counted)
    with torch.inference_mode():
        fast = dispatch.run_group(group, x, ctx)
        ref = group(x, ctx)
    assert bool(calls) == (built() and not pads)  # pads: SDPA with the reference's mask
    torch.testing.assert_close(fast[mask], ref[mask], atol=2e-6, rtol=2e-5)
