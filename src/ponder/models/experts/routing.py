"""What the routed FFN kinds share: the row bookkeeping, capacity, shared experts, aux losses,
FLOPs and routing statistics.

A kind subclasses :class:`RoutedFFN` and implements ``route`` (which rows go to which experts
with what gate). The rows that do not really enter the block (pads and frozen tokens that a
dense pass computes anyway; ``ctx.row_weight``) are never routed: they take no capacity, no
expert runs on them, and aux losses and statistics average over the entering rows only — so
dense and compacted execution route the same tokens the same way.

Order of priority under a capacity (who is dropped first): choice rank (every token's first
choice before any second choice, as GShard), then position, then sequence — so a token is
never dropped because of a later position's choice.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.models.experts.dispatch import ExpertBank
from ponder.models.layers import FFN, AttnContext


@dataclass
class Assignment:
    """A routing decision: A (token, expert) pairs.

    token [A] long   rows of x
    expert [A] long
    gate [A] float   the expert output's weight (on the gradient path)
    choice [A] long  the pair's choice rank for its token (0: its first expert)
    complete         the pairs are k per entering row, choice-major (token = idx repeated k
                     times): combined without a scatter
    """

    token: torch.Tensor
    expert: torch.Tensor
    gate: torch.Tensor
    choice: torch.Tensor
    complete: bool = False


def grid_shape(ctx: Optional[AttnContext], n_rows: int, rows: Optional[torch.Tensor]) -> tuple[int, int]:
    """(B, L) of the batch the rows come from; (1, R) without a context that matches."""
    if ctx is None:
        return 1, n_rows
    B, L = ctx.key_mask.shape
    if rows is None and n_rows != B * L:
        return 1, n_rows
    return B, L


def entering(ctx: Optional[AttnContext], rows: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """[R] bool: the rows that really enter the block (all of them without a context)."""
    if ctx is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return ctx.row_weight(rows, x.shape[0], x.dtype) > 0


def priority(ctx: Optional[AttnContext], rows: Optional[torch.Tensor], n_rows: int,
             device: torch.device) -> torch.Tensor:
    """[R] long: a row's rank in the position-major order (position, then sequence)."""
    B, L = grid_shape(ctx, n_rows, rows)
    flat = torch.arange(n_rows, device=device) if rows is None else rows
    return (flat % L) * B + torch.div(flat, L, rounding_mode="floor")


def within_capacity(a: Assignment, key: torch.Tensor, capacity: int,
                    n_experts: int) -> Optional[torch.Tensor]:
    """[A] bool: the pairs each expert keeps, the first ``capacity`` of its pairs in the order
    (choice, ``key`` [A] of the pair's token); the others are dropped. None: every pair is
    kept (no expert is over capacity: the common case, found without sorting)."""
    if a.token.numel() == 0:
        return None
    counts = torch.bincount(a.expert, minlength=n_experts)
    if int(counts.max()) <= capacity:
        return None
    span = int(key.max()) + 1
    k = int(a.choice.max()) + 1
    # one sort on (expert, choice, key): the keys are distinct per pair
    order = torch.argsort((a.expert * k + a.choice) * span + key)
    start = counts.cumsum(0) - counts
    rank = torch.arange(order.numel(), device=order.device) - start.index_select(0, a.expert.index_select(0, order))
    keep = torch.empty_like(a.token, dtype=torch.bool)
    keep[order] = rank < capacity
    return keep


def load_balance(probs_t: torch.Tensor, expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch's ``N · Σ_i f_i P_i`` (without α): probs_t [E, n] router probabilities of the
    entering rows, expert [A] their chosen experts (before capacity drops; a token with k
    choices counts 1/k per choice, so Σ f = 1 and the loss is 1 at uniform routing)."""
    n = probs_t.shape[1]
    f = torch.bincount(expert, minlength=n_experts).to(probs_t.dtype) / max(expert.numel(), 1)
    P = probs_t.sum(1) / max(n, 1)
    return n_experts * (f * P).sum()


def mutual_information(probs_t: torch.Tensor) -> torch.Tensor:
    """SUT's MI between expert and token, in nats: probs_t [E, n] the router probabilities
    p(e | x) of n tokens, each token weighing 1/n (p(x) uniform over the batch's entering
    rows) → ``H(mean_x p(e|x)) − mean_x H(p(e|x))``. Maximising it (SUT's MI loss is its
    negative) asks for balanced average usage *and* confident per-token choices."""
    if probs_t.shape[1] == 0:
        return probs_t.sum()
    return _entropy_t(probs_t.mean(1)) - _entropy_t(probs_t).mean()


def _entropy_t(p_t: torch.Tensor) -> torch.Tensor:
    """Entropy along the experts axis of p_t [E, ...] → [...] nats."""
    return -(p_t * p_t.clamp_min(1e-30).log()).sum(0)


def _pooled_mi_loss(weight: float, stats: dict) -> torch.Tensor:
    """−weight · MI from pooled statistics: p [E] Σ_x p(e|x), h Σ_x H(p(·|x)), n the rows."""
    return -weight * (_entropy_t(stats["p"] / stats["n"]) - stats["h"] / stats["n"])


def add_pooled_mi(ctx: AttnContext, name: str, module: nn.Module, weight: float,
                  probs_t: torch.Tensor) -> None:
    """SUT's MI loss ``−weight · MI(expert; token)`` of ``module``'s router, pooled over every
    call of the module in this forward: probs_t [E, n] the router probabilities of one call's
    entering rows. SUT's layers accumulate their routers' statistics over all applications
    of the shared layer (``moe.py``: ``acc_aux_loss=True``, ``update_aux_statistics``) and
    compute one MI per module per forward (``get_aux_loss_and_clear``, each row of every call
    weighing 1 / all rows), so a core applied N times adds one term bounded by
    ``weight · log E`` — not N of them, which outweighed the task loss (docs/results/experts.md)."""
    if probs_t.shape[1] == 0:
        return
    stats = {"p": probs_t.sum(1), "h": _entropy_t(probs_t).sum(),
             "n": probs_t.new_tensor(float(probs_t.shape[1]))}
    ctx.add_pooled(name, id(module), stats, functools.partial(_pooled_mi_loss, weight))


def z_loss(logits_t: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss ``mean(logsumexp(logits)²)`` over the entering rows (logits_t [E, n])."""
    return torch.logsumexp(logits_t, 0).pow(2).mean() if logits_t.shape[1] else logits_t.sum()


def small_topk(scores_t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over experts of scores_t [E, n] → (values [k, n], indices [k, n]), best first.

    k rounds of argmax: on a CPU, ``topk`` over a short dim costs ~10× a max at k ≤ 4."""
    if k > 4:
        v, i = scores_t.topk(k, 0)
        return v, i
    work = scores_t.detach().clone()
    picks = []
    for j in range(k):
        i = work.max(0).indices  # (argmax over dim 0 is ~10× slower on a CPU)
        picks.append(i)
        if j + 1 < k:
            work.scatter_(0, i[None], -math.inf)
    ind = torch.stack(picks)
    return scores_t.gather(0, ind), ind


def routing_stats(ctx: Optional[AttnContext], name: str, probs_t: Optional[torch.Tensor],
                  expert: torch.Tensor, kept: int, n_experts: int) -> None:
    """Routing statistics (``route/<name>.<stat>`` in the training stats): the dropped share
    of the assignments, the imbalance ``max_i load_i · E`` (1 = balanced), the per-token
    routing entropy and the router margin (top-1 minus top-2 probability); probs_t [E, n]."""
    if ctx is None or expert.numel() == 0:
        return
    with torch.no_grad():
        load = torch.bincount(expert, minlength=n_experts).double() / expert.numel()
        ctx.add_stat(f"{name}.dropped", 1.0 - kept / expert.numel())
        ctx.add_stat(f"{name}.imbalance", float(load.max()) * n_experts)
        if probs_t is not None and probs_t.shape[1]:
            p = probs_t.detach()
            ctx.add_stat(f"{name}.entropy", float(-(p * p.clamp_min(1e-30).log()).sum(0).mean()))
            if n_experts >= 2:
                top, _ = small_topk(p, 2)
                ctx.add_stat(f"{name}.margin", float((top[0] - top[1]).mean()))


def count_row_flops(ctx: Optional[AttnContext], rows: Optional[torch.Tensor], per_row: torch.Tensor) -> None:
    """``ctx.count_row_flops`` (per_row [R]: FLOPs beyond the nominal ``flops_per_token``),
    skipped where the rows are not the context's tokens (a bare call on a segment of them)."""
    if ctx is None or ctx.flops is None or (rows is None and per_row.numel() != ctx.flops.numel()):
        return
    ctx.count_row_flops(rows, per_row)


def note_experts(ctx: Optional[AttnContext], rows: Optional[torch.Tensor], n_rows: int,
                 idx: torch.Tensor, expert: torch.Tensor) -> None:
    """Remember each entering row's first-choice expert ``expert [n]`` in the context
    (``ctx.entering["expert"]`` [B·L] long, −1 where none ran): the last routed FFN call a
    token entered outside the readouts (prelude or core) wins. The model hands it to the
    eval records (``expert`` column)."""
    if ctx is None or ctx.entering.get("readout", False) or expert.numel() != idx.numel():
        return
    B, L = ctx.key_mask.shape
    if rows is None and n_rows != B * L:
        return
    buf = ctx.entering.get("expert")
    if buf is None:
        buf = ctx.entering["expert"] = torch.full((B * L,), -1, dtype=torch.long, device=idx.device)
    buf[idx if rows is None else rows.index_select(0, idx)] = expert.detach()


class RoutedFFN(FFN):
    """Base of the token-choice kinds: a router, an :class:`ExpertBank`, optional shared experts.

        forward(x [R, D], ctx, rows) → Σ_assigned gate · expert(x) (+ shared experts)

    Width: each expert has ``d_expert`` hidden units (knob; 0 = ``d_ff // k``, so the active
    width of a token equals the dense FFN's ``d_ff``). ``shared`` experts of the same width
    run on every row, beside the routed ones (DeepSeekMoE-style). Knobs a subclass's ``Knobs``
    may have: ``n_experts``, ``k``, ``d_expert``, ``shared``, ``capacity_factor``,
    ``balance``, ``z_loss``.
    """

    has_router: bool = True
    peri = "select"

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        knobs = knobs if knobs is not None else self.Knobs()
        self.knobs = knobs
        self.k = self.top_k(knobs)
        self.n_experts = knobs.n_experts
        if self.k > self.n_experts:
            raise ConfigError(f"ffn kind {self.name!r}: k={self.k} exceeds n_experts={self.n_experts}")
        width = knobs.d_expert or max(1, d_ff // self.k)
        self.experts = ExpertBank(n_experts=self.n_experts, d_model=d_model, d_expert=width)
        self.router = nn.Linear(d_model, self.n_experts, bias=False) if self.has_router else None
        n_shared = getattr(knobs, "shared", 0)
        self.shared = (nn.Sequential(nn.Linear(d_model, n_shared * width), nn.GELU(),
                                     nn.Linear(n_shared * width, d_model)) if n_shared else None)
        self.drop = nn.Dropout(dropout)
        self.d_model = d_model

    @staticmethod
    def top_k(knobs: Any) -> int:
        return getattr(knobs, "k", 1)

    def route(self, x: torch.Tensor, idx: torch.Tensor, ctx: Optional[AttnContext],
              rows: Optional[torch.Tensor]) -> tuple[Assignment, Optional[torch.Tensor]]:
        """x [R, D], idx [n] the entering rows → (assignment over rows of x, the router
        probabilities of the entering rows [E, n] or None); adds the kind's aux losses."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, ctx: Optional[AttnContext] = None,
                rows: Optional[torch.Tensor] = None, select: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] → [R, D]; rows that do not enter get 0 from the routed experts. ``select``
        [R, D]: the rows the router reads instead of x (peri-layernorm: the normed residual,
        while the experts read the raw x)."""
        R = x.shape[0]
        idx = entering(ctx, rows, x).nonzero().view(-1)
        a, probs = self.route(x if select is None else select, idx, ctx, rows)
        keep: Optional[torch.Tensor] = None
        cf = getattr(self.knobs, "capacity_factor", 0.0)
        if cf > 0 and a.token.numel():
            capacity = math.ceil(cf * idx.numel() * self.k / self.n_experts)
            keep = within_capacity(a, priority(ctx, rows, R, x.device).index_select(0, a.token),
                                   capacity, self.n_experts)
        chosen, pairs_of = a.expert, a.token
        if a.complete:
            note_experts(ctx, rows, R, idx, a.expert[:idx.numel()])
        if keep is not None:
            a = Assignment(a.token[keep], a.expert[keep], a.gate[keep], a.choice[keep])
        routing_stats(ctx, self.name, probs, chosen, a.token.numel(), self.n_experts)
        if keep is None and a.complete and a.token.numel() == self.k * idx.numel():
            # every entering row has its k pairs, choice-major: combine them without a scatter
            y_rows = self.experts.combine(x, a.token, a.expert, a.gate, self.k)
            y = y_rows if idx.numel() == R else x.new_zeros(x.shape).index_copy(0, idx, y_rows)
        else:
            y = self.experts.dispatch(x, a.token, a.expert, a.gate)
        if ctx is not None and keep is not None:
            # a dropped pair evaluated no expert: the difference from the nominal count
            dropped = torch.zeros(R, dtype=torch.float64, device=x.device)
            dropped.index_add_(0, pairs_of, (~keep).double())
            count_row_flops(ctx, rows, -dropped * self.experts.flops_per_token())
        if self.shared is not None:
            y = y + self.shared(x)
        return self.drop(y)

    def flops_per_token(self) -> float:
        """Router + k experts + the shared experts (nominal: a dropped token subtracts its
        expert through ``ctx.count_row_flops``)."""
        D, E = self.d_model, self.n_experts
        router = 2.0 * D * E if self.router is not None else 0.0
        shared = 0.0
        if self.shared is not None:
            shared = 4.0 * D * self.shared[0].out_features
        return router + self.k * self.experts.flops_per_token() + shared


def choice_major(idx: torch.Tensor, experts: torch.Tensor, gates: torch.Tensor) -> Assignment:
    """idx [n] entering rows, experts / gates [k, n] (choice j of each row) → the pairs,
    choice-major."""
    k = experts.shape[0]
    choice = torch.arange(k, device=idx.device).repeat_interleave(idx.numel()) if k > 1 else \
        torch.zeros_like(idx)
    return Assignment(token=idx.repeat(k) if k > 1 else idx, expert=experts.reshape(-1),
                      gate=gates.reshape(-1), choice=choice, complete=True)


def router_logits(router: nn.Linear, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Router logits of the entering rows idx [n] of x [R, D], experts first: [E, n] (the
    softmax / max / logsumexp over experts run ~10× faster along a long contiguous dim)."""
    xs = x if idx.numel() == x.shape[0] else x.index_select(0, idx)  # idx is sorted
    return router.weight @ xs.t()


def softmax_router(router: nn.Linear, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits and softmax probabilities of the entering rows: each [E, n]."""
    logits = router_logits(router, x, idx)
    return logits, F.softmax(logits, 0)
