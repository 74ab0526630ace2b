"""A fused RMSNorm: the forward and backward of ``x · rsqrt(mean(x²) + eps) · w`` by hand.

Why: written as PyTorch ops the norm keeps, for the backward pass, the squared input, the
normalised input ``x · r`` (a second full ``[..., D]`` tensor) and the broadcast scale; with
two norms per block that was the whole training-memory excess over ``nn.TransformerEncoder``
(whose LayerNorm is one fused kernel). This function keeps only its input and the per-row
scale ``r`` ``[..., 1]`` and recomputes the rest.

Backward, with ``g`` the output gradient, ``gw = g · w`` and ``D`` the last dimension:

    dL/dx = r · gw − x · r³ · mean(gw · x)        dL/dw = Σ_rows g · x · r

The backward is written with differentiable ops (and recomputes r from x when a graph of
it is asked for), so double backward works too.
"""

from __future__ import annotations

import torch


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)   # [..., 1]
        ctx.save_for_backward(x, weight, r)
        ctx.eps = eps
        return x * r * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, r = ctx.saved_tensors
        if torch.is_grad_enabled():
            # double backward (create_graph): r must be a function of x in this graph
            r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + ctx.eps)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gw = grad * weight
            grad_x = r * gw - x * (r.pow(3) * (gw * x).mean(-1, keepdim=True))
        if ctx.needs_input_grad[1]:
            grad_w = (grad * x * r).reshape(-1, x.shape[-1]).sum(0)
        return grad_x, grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D], weight [D] → x · rsqrt(mean(x², -1) + eps) · weight, [..., D]."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        # nothing to save for: the plain ops (one pass fewer than going through Function)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    return _RMSNormFunction.apply(x, weight, eps)
