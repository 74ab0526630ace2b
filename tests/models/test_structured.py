"""``lowrank``, ``monarch``, ``btt``: each equals the dense FFN whose weight matrices are
materialised entry by entry from the factors' definitions (forward and gradients, float64);
each has the dense FFN's parameter count at a larger width; bad knobs are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ponder.errors import ConfigError
from ponder.models.kinds import FFNS
from ponder.models.layers import AttnContext
from ponder.models.structured import BTTLinear, LowRankLinear, dense_params, solve_width

KINDS = ["lowrank", "monarch", "btt"]


def materialise(lin) -> torch.Tensor:
    """The dense [m, n] matrix of a structured map, one entry at a time."""
    if isinstance(lin, LowRankLinear):
        return torch.stack([torch.stack([sum(lin.U[i, a] * lin.V[a, j] for a in range(lin.rank))
                                         for j in range(lin.n)]) for i in range(lin.m)])
    assert isinstance(lin, BTTLinear)
    Lc, Rc = lin.core_tensors()  # L [m1, m2, n1, r], R [n1, m1, r, n2]
    rows = []
    for i in range(lin.m1):
        for c in range(lin.m2):
            rows.append(torch.stack([sum(Lc[i, c, j, a] * Rc[j, i, a, k] for a in range(lin.rank))
                                     for j in range(lin.n1) for k in range(lin.n2)]))
    return torch.stack(rows)  # row (i, c) → i·m2 + c; column (j, k) → j·n2 + k


def build(kind: str, knobs: dict | None = None, d_model: int = 8, d_ff: int = 16):
    torch.manual_seed(0)
    return FFNS.cls(kind)(d_model=d_model, d_ff=d_ff, knobs=FFNS.knobs(kind, knobs or {})).double()


@pytest.mark.parametrize("kind,knobs", [("lowrank", {}), ("lowrank", {"rank": 3}), ("monarch", {}),
                                        ("monarch", {"blocks": 4}), ("btt", {}), ("btt", {"rank": 1})])
def test_structured_equals_materialised_dense(kind, knobs):
    ffn = build(kind, knobs)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(7, 8, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 7, dtype=torch.bool)
    mask[0, 5:] = False  # pads: a position-wise kind maps each row alone
    out = ffn(x, AttnContext.build(mask, causal=False), None)
    W_up, W_down = materialise(ffn.up), materialise(ffn.down)
    assert W_up.shape == (ffn.width, 8) and W_down.shape == (8, ffn.width)
    ref = F.linear(F.gelu(F.linear(x, W_up, ffn.up_b)), W_down, ffn.down_b)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    params = [x] + list(ffn.parameters())
    got = torch.autograd.grad((out * up).sum(), params)
    want = torch.autograd.grad((ref * up).sum(), params)
    for name, a, b in zip(["x"] + [n for n, _ in ffn.named_parameters()], got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)
    # a row's output does not depend on the others (the compacted path passes a subset)
    rows = torch.tensor([4, 0, 2])
    torch.testing.assert_close(ffn(x[rows], None, rows), out[rows], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d_model,d_ff", [(16, 32), (64, 256), (128, 512)])
def test_structured_matches_dense_parameters_at_a_larger_width(kind, d_model, d_ff):
    ffn = build(kind, d_model=d_model, d_ff=d_ff)
    dense = FFNS.cls("dense")(d_model=d_model, d_ff=d_ff)
    n_dense = sum(p.numel() for p in dense.parameters())
    assert n_dense == dense_params(d_model, d_ff)
    n = sum(p.numel() for p in ffn.parameters())
    # the width solver's count is the module's real count, and it is the dense FFN's
    assert n == solve_width(type(ffn), d_model, d_ff, FFNS.knobs(kind, {}))[1]
    assert abs(n - n_dense) <= 0.05 * n_dense, (n, n_dense)
    assert ffn.width > d_ff  # the point: structure buys width at equal parameters
    # two FLOPs per weight: equal parameters ≈ equal FLOPs per token
    weights = n - ffn.width - d_model
    assert ffn.flops_per_token() == 2.0 * weights
    assert abs(ffn.flops_per_token() - dense.flops_per_token()) <= 0.1 * dense.flops_per_token()


def test_monarch_is_two_block_diagonal_factors():
    """Monarch with b blocks is the rank-1 BTT with b input and b output blocks: each (output
    block, input block) sub-matrix of its dense matrix is an outer product L[i, :, j] R[j, i, :]."""
    ffn = build("monarch", {"blocks": 2})
    lin = ffn.up
    assert (lin.rank, lin.n1, lin.m1) == (1, 2, 2)
    W = materialise(lin).detach()
    for i in range(lin.m1):
        for j in range(lin.n1):
            sub = W[i * lin.m2:(i + 1) * lin.m2, j * lin.n2:(j + 1) * lin.n2]
            assert torch.linalg.matrix_rank(sub) == 1


@pytest.mark.parametrize("kind,knobs,match", [("monarch", {"blocks": 3}, "divide"),
                                              ("lowrank", {"rank": 64}, "cannot match")])
def test_structured_bad_knobs_are_refused(kind, knobs, match):
    with pytest.raises(ConfigError, match=match):
        build(kind, knobs, d_model=16, d_ff=32)
    with pytest.raises(ConfigError):
        FFNS.knobs("btt", {"rank": 0})
