"""The stacked (non-shared) depth-adaptive model: L = max_steps distinct layers, step n is layer n.

Same prelude, coda, head, engine and policies as the recurrent model; only the core differs:
each step has its own group of G blocks. No step embedding (a layer knows its depth), so
``ModelConfig.step_embedding`` is ignored here.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ponder.models.config import ModelConfig
from ponder.models.layers import BlockSpec, Group
from ponder.models.recurrent import RecurrentTransformer
from ponder.policies.base import Policy


class StackedTransformer(RecurrentTransformer):
    kind = "stacked"

    def build_core(self, spec: BlockSpec) -> None:
        self.layers = nn.ModuleList(self.core_groups(self.cfg.max_steps, spec))
        self.step_emb = None

    def core_group(self, n: int) -> Group:
        return self.layers[n - 1]

    def step_vector(self, n: int) -> Optional[torch.Tensor]:
        return None


def build_stacked(cfg: ModelConfig, policy: Policy, *, vocab_size: int) -> nn.Module:
    return StackedTransformer(cfg=cfg, policy=policy, vocab_size=vocab_size)
