"""Depth randomisation in training: a loop count per optimiser step, truncated backprop.

Huginn's recipe (Geiping et al. 2025, ``randomized_iteration_sampler``): per batch draw
``τ ~ LogNormal(log r̄ − σ²/2, σ)`` (so E[τ] = r̄), then ``r = Poisson(τ) + 1`` loop steps,
and backpropagate only through the last k of them (the earlier ones run without autograd).
Here r is clamped to ``[depth.min_steps, model.max_steps]`` (the model's N is the most its
step embedding and policy are built for; evaluation runs N). ``uniform`` draws r uniformly
from ``min_steps..N`` instead (random loop counts, the stochastic-stopping baseline).

The draw for optimiser step s comes from a generator seeded by ``(run.seed, s)`` only, so a
resumed run draws exactly the depths an uninterrupted one draws, every data-parallel rank
draws the same depth, and the draws never disturb the other random streams.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ponder.errors import ConfigError

SAMPLERS = ("none", "poisson_lognormal", "uniform")


def check_depth_config(depth: Any, *, max_steps: int) -> None:
    """Range checks of ``cfg.depth`` against the model's N (ConfigError)."""
    if depth.sampler not in SAMPLERS:
        raise ConfigError(f"unknown depth.sampler {depth.sampler!r}; samplers: {', '.join(SAMPLERS)}")
    if not (depth.mean >= 0 and math.isfinite(depth.mean)):
        raise ConfigError(f"depth.mean must be >= 0 (0 = max_steps / 2), got {depth.mean}")
    if not (depth.sigma > 0 and math.isfinite(depth.sigma)):
        raise ConfigError(f"depth.sigma must be > 0, got {depth.sigma}")
    if not 1 <= depth.min_steps <= max_steps:
        raise ConfigError(f"depth.min_steps must lie in 1..model.max_steps={max_steps}, got {depth.min_steps}")
    if depth.backprop < 0:
        raise ConfigError(f"depth.backprop must be >= 0 (0 = through every step), got {depth.backprop}")


def active(depth: Any) -> bool:
    """Whether the config changes the forward at all."""
    return depth.sampler != "none" or depth.backprop > 0


def draw_steps(depth: Any, *, max_steps: int, seed: int, step: int) -> int:
    """The loop count of optimiser step ``step`` (0-based) of a run seeded ``seed``."""
    if depth.sampler == "none":
        return max_steps
    rng = np.random.default_rng([seed, step, 0x0DE9])
    if depth.sampler == "uniform":
        r = int(rng.integers(depth.min_steps, max_steps + 1))
    else:
        mean = depth.mean or max_steps / 2
        tau = rng.lognormal(math.log(mean) - depth.sigma ** 2 / 2, depth.sigma)
        r = int(rng.poisson(tau)) + 1
    return min(max(r, depth.min_steps), max_steps)


def forward_kwargs(depth: Any, *, max_steps: int, seed: int, step: int) -> dict[str, int]:
    """Keyword arguments of the model's forward for this optimiser step (``{}`` when off)."""
    if not active(depth):
        return {}
    return {"steps": draw_steps(depth, max_steps=max_steps, seed=seed, step=step),
            "backprop": depth.backprop}


def check_model(depth: Any, model: torch.nn.Module) -> None:
    """Refuse, before anything is written, a model or policy that cannot run other depths."""
    if not active(depth):
        return
    if getattr(model, "kind", None) not in ("recurrent", "stacked"):
        raise ConfigError(f"depth randomisation needs a recurrent or stacked model, not {getattr(model, 'kind', '?')!r}")
    if depth.sampler != "none":
        policy = model.policy
        if not type(policy).any_depth:
            raise ConfigError(f"policy {policy.name!r} is bound to max_steps and cannot train with "
                              f"random loop counts (depth.sampler={depth.sampler})")
