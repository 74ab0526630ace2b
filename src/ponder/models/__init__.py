"""Models: the recurrent and stacked depth-adaptive Transformers, and a registry of kinds.

>>> import ponder.models, ponder.policies
>>> cfg = ponder.models.ModelConfig(kind="recurrent", positions="none")
>>> model = ponder.models.build(cfg, ponder.policies.get("pondernet"), vocab_size=12)
>>> out = model(tokens, mask)                 # ModelOutput
>>> loss, stats = model.loss(out, targets)

A new model kind registers a builder ``builder(cfg, policy, *, vocab_size) -> nn.Module``
with :func:`register_model` (``ponder.models.adatape`` is imported here when it exists and
registers ``"adatape"``).
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional, Union

from torch import nn

from ponder.errors import ConfigError
from ponder.models.config import ModelConfig, ModelOutput
from ponder.policies.base import Policy

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register_model(kind: str, builder: Builder) -> None:
    """Make ``builder(cfg, policy, *, vocab_size)`` available as ``ModelConfig.kind == kind``."""
    if kind in _REGISTRY and _REGISTRY[kind] is not builder:
        raise ValueError(f"model kind {kind!r} registered twice")
    _REGISTRY[kind] = builder


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(model_cfg: ModelConfig, policy: Union[Policy, str], *, vocab_size: int,
          tokens: Optional[list[str]] = None) -> nn.Module:
    """Build the model of ``model_cfg.kind`` under ``policy`` (a fresh Policy or its name).

    ``tokens``: the vocabulary's strings in id order, needed when ``model_cfg.token_parts``
    (the recurrent and stacked kinds then embed compound tokens' parts too).
    """
    if isinstance(policy, str):
        from ponder.policies import get as get_policy
        policy = get_policy(policy)
    if model_cfg.kind not in _REGISTRY:
        raise ConfigError(f"unknown model kind {model_cfg.kind!r}; kinds: {', '.join(names())}")
    model = _REGISTRY[model_cfg.kind](model_cfg, policy, vocab_size=vocab_size)
    if getattr(model_cfg, "token_parts", False):
        if tokens is None:
            raise ConfigError("model.token_parts needs the vocabulary's tokens (build(..., tokens=...))")
        embed = getattr(model, "embed", None)
        if not hasattr(embed, "attach_parts"):
            raise ConfigError(f"model kind {model_cfg.kind!r} does not support token_parts")
        embed.attach_parts(list(tokens))
    return model


from ponder.models.recurrent import build_recurrent  # noqa: E402
from ponder.models.stacked import build_stacked  # noqa: E402

register_model("recurrent", build_recurrent)
register_model("stacked", build_stacked)

# block kinds beyond layers.py's; importing a module registers its kinds in ponder.models.kinds
from ponder.models import fff, geometric, moa, sharcs, structured, switchhead  # noqa: E402,F401
import ponder.models.experts  # noqa: E402,F401  (registers the routed mixture-of-experts FFN kinds)

for _optional in ("ponder.models.adatape", "ponder.models.routers", "ponder.models.colt5",
                  "ponder.models.colt5_attention"):
    try:
        importlib.import_module(_optional)
    except ModuleNotFoundError as _exc:
        if _exc.name != _optional:  # a broken import inside the module still raises
            raise

__all__ = ["ModelConfig", "ModelOutput", "build", "names", "register_model"]
