"""``expert_choice``: each expert picks its tokens (Zhou et al. 2022). NOT causal.

    S = softmax(x W_r) [n, E]      expert e takes the top-k_b tokens of sequence b by S[:, e]
    y_j = Σ_{e that took j} S[j, e] · expert_e(x_j)

``k_b = ceil(capacity · n_b / E)`` per sequence (n_b: its rows entering the block), so a
sample's answer never depends on the rest of its batch. A token may be taken by several
experts or by none (then the routed experts add nothing). No aux loss (as the paper). Which
tokens an expert takes depends on the later positions' scores: a causal model refuses it.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ponder.models.experts.routing import Assignment, RoutedFFN, count_row_flops, grid_shape, softmax_router
from ponder.models.kinds import FFNS
from ponder.tasks.base import knob


@dataclasses.dataclass(frozen=True)
class ExpertChoiceKnobs:
    n_experts: int = knob(8, lo=1, hi=256, help="routed experts")
    capacity: float = knob(2.0, lo=0.01, hi=256.0, help="c: each expert takes c·n/E tokens of a sequence")
    d_expert: int = knob(0, lo=0, hi=65536, help="hidden width of an expert (0: d_ff)")
    shared: int = knob(0, lo=0, hi=16, help="shared experts run on every token")


@FFNS.register
class ExpertChoice(RoutedFFN):
    """Experts choose their top tokens per sequence; non-causal."""

    name = "expert_choice"
    causal = False
    paper = "Zhou et al. 2022, Mixture-of-Experts with Expert Choice Routing"
    Knobs = ExpertChoiceKnobs

    def route(self, x, idx, ctx, rows):
        R = x.shape[0]
        B, L = grid_shape(ctx, R, rows)
        E, n = self.n_experts, idx.numel()
        flat = idx if rows is None else rows.index_select(0, idx)
        seq, pos = torch.div(flat, L, rounding_mode="floor"), flat % L
        _, probs_t = softmax_router(self.router, x, idx)
        probs = probs_t.t()                                          # [n, E]
        n_b = torch.bincount(seq, minlength=B)
        k_b = torch.minimum(torch.ceil(self.knobs.capacity * n_b.double() / E).long(), n_b)
        kmax = int(k_b.max()) if n else 0
        empty = idx.new_zeros(0)
        if kmax == 0:
            return Assignment(empty, empty, probs.new_zeros(0), empty), probs_t
        # selection on a [B, L, E] grid of scores (−inf off the entering rows)
        grid = probs.new_full((B, L, E), -math.inf).index_put((seq, pos), probs.detach())
        local = torch.full((B, L), -1, dtype=torch.long, device=x.device)
        local = local.index_put((seq, pos), torch.arange(n, device=x.device))
        top = grid.topk(kmax, dim=1).indices                        # [B, kmax, E]
        valid = torch.arange(kmax, device=x.device)[None, :, None] < k_b[:, None, None]
        valid = valid.expand_as(top)
        j = local.gather(1, top.flatten(1)).view_as(top)[valid]      # entering-row index
        e = torch.arange(E, device=x.device).expand_as(top)[valid]
        if ctx is not None:
            taken = torch.bincount(j, minlength=n).double()
            ctx.add_stat(f"{self.name}.unrouted", float((taken == 0).double().mean()))
            # FLOPs: the experts a token really ran, against the nominal ``capacity``
            per_row = torch.zeros(R, dtype=torch.float64, device=x.device)
            per_row[idx] = (taken - self.knobs.capacity) * self.experts.flops_per_token()
            count_row_flops(ctx, rows, per_row)
        return Assignment(idx.index_select(0, j), e, probs[j, e], torch.zeros_like(j)), probs_t

    def flops_per_token(self) -> float:
        """Router + ``capacity`` experts on average + shared (per row, ``ctx.count_row_flops`` adds
        the difference of the experts that really took it)."""
        D = self.d_model
        shared = 4.0 * D * self.shared[0].out_features if self.shared is not None else 0.0
        return 2.0 * D * self.n_experts + self.knobs.capacity * self.experts.flops_per_token() + shared
