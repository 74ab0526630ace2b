"""The fused RMSNorm equals the composite formula (values, gradients, double backward) and
keeps less for the backward pass. Peak training memory against nn.TransformerEncoder is a
benchmark: ``benchmarks/norm_memory.py``."""

from __future__ import annotations

import pytest
import torch

from ponder.models.layers import RMSNorm
from ponder.models.norm import rms_norm


def composite(x, w, eps):
    """The formula as plain ops (the norm before it was fused)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def loop_reference(x, w, eps):
    """Row by row in Python floats: y_i = x_i / sqrt(mean_j x_j² + eps) · w_i."""
    flat = x.reshape(-1, x.shape[-1]).tolist()
    out = []
    for row in flat:
        r = (sum(v * v for v in row) / len(row) + eps) ** -0.5
        out.append([v * r * float(wi) for v, wi in zip(row, w.tolist())])
    return torch.tensor(out, dtype=x.dtype).view(x.shape)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 4, 6)])
@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_values_and_gradients_match_the_composite(shape, eps):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.3 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).requires_grad_(True)
    y = rms_norm(x, w, eps)
    torch.testing.assert_close(y, loop_reference(x.detach(), w.detach(), eps), atol=1e-12, rtol=1e-12)
    up = torch.randn(*shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((y * up).sum(), (x, w))
    want = torch.autograd.grad((composite(x, w, eps) * up).sum(), (x, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, eps), (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: rms_norm(x, w, eps), (x, w))


def test_only_input_and_row_scale_are_saved():
    x = torch.randn(8, 32, requires_grad=True)
    w = torch.ones(32, requires_grad=True)

    def saved_numel(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn(x, w, 1e-6).sum()
        return sizes

    fused = saved_numel(rms_norm)
    # x (256), weight (32), the row scale (8): no second [8, 32] tensor
    assert sorted(fused) == [8, 32, 256]
    assert sum(saved_numel(composite)) >= sum(fused) + 256


def test_module_uses_it_and_no_grad_path_agrees():
    norm = RMSNorm(d_model=16).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 16, dtype=torch.float64, requires_grad=True)
    y = norm(x)
    assert y.grad_fn is not None and "RMSNorm" in type(y.grad_fn).__name__
    with torch.no_grad():
        torch.testing.assert_close(norm(x), y.detach(), atol=0, rtol=0)
    torch.testing.assert_close(y, composite(x, norm.weight, norm.eps), atol=1e-14, rtol=1e-14)
