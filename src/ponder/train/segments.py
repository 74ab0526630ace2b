"""Deep supervision / outer refinement (HRM, TRM): K supervised segments per batch.

Segment 1 runs the model as usual; segment k > 1 starts the core from segment k−1's exit
state, **detached** (``forward(state=...)``, no prelude), so no gradient crosses a segment
boundary. Every segment's output gets the policy's loss. ``supervision.step_per_segment``
(the published form) takes an optimiser step after every segment, the later segments
starting from a state the earlier parameters computed; ``false`` averages the K segment
losses into one step. The learning-rate schedule advances once per batch either way, so
``run.steps`` still counts batches and a checkpoint (taken between batches) resumes exactly.

At inference (validation in training, ``ponder eval``) the model runs the same K segments
and answers with the last one's readout; a token's steps are summed over the segments.
"""

from __future__ import annotations

from typing import Any

import torch

from ponder.errors import ConfigError
from ponder.models.config import ModelOutput


def check_config(sup: Any) -> None:
    if sup.segments < 1:
        raise ConfigError(f"supervision.segments must be >= 1 (1 = off), got {sup.segments}")


def active(sup: Any) -> bool:
    return sup.segments > 1


def check_model(sup: Any, model: torch.nn.Module) -> None:
    """Refuse, before anything is written, a model that cannot start from a carried state."""
    if active(sup) and getattr(model, "kind", None) not in ("recurrent", "stacked"):
        raise ConfigError(f"deep supervision (supervision.segments={sup.segments}) needs a recurrent "
                          f"or stacked model, not {getattr(model, 'kind', '?')!r}")


def forward_segments(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor, *,
                     segments: int, **kwargs: Any) -> ModelOutput:
    """The inference answer after ``segments`` segments: the last segment's output with
    ``steps`` [B, L] (and ``flops``) summed over the segments. One segment = ``model(...)``."""
    out = model(tokens, mask, **kwargs)
    steps, flops = out.steps, out.flops
    for _ in range(segments - 1):
        out = model(tokens, mask, state=out.extras["state"].detach(), **kwargs)
        steps = steps + out.steps
        flops = flops + out.flops if flops is not None and out.flops is not None else None
    out.steps, out.flops = steps, flops
    return out
