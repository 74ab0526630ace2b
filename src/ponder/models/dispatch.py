"""The attention dispatcher: the ONE place that decides how queries meet keys.

Attention kinds (:class:`ponder.models.layers.AttentionKind`) only project rows (queries,
keys/values, output). Given the queries of chosen rows and the keys/values of every token,
:class:`Dispatch` picks the backend:

- the compiled unpadded attention of :mod:`ponder.kernels` (no autograd, float32 on the
  CPU, a supported head size, no dropout): the queries stay in their ``[T, D]`` buffer,
  grouped by sequence (``StepIndex.starts``);
- ``F.scaled_dot_product_attention`` on the whole ``[B, H, L, hd]`` grid when every row is a
  query (``StepIndex.dense``);
- otherwise the queries padded per sequence to the largest active count (``[B', H, A_max,
  hd]``) for one SDPA call — two calls for two groups of sequences sorted by active count
  when that saves enough padding; fully halted sequences are dropped when few are live; with
  a handful of queries per sequence (no autograd) two matrix multiplies replace SDPA.

:func:`attend_among` runs attention among a subset of the tokens only (routed keys).

An attention kind whose weights are not a softmax (``AttentionKind.weights``, e.g. NDR's
geometric attention) has its own ``attend_grid``: the queries are scattered to their own
positions in a ``[B, H, L, ·]`` grid (its weights depend on the distance between query and
key, so queries are never packed by rank) and the compiled kernels stay out.

Used by the compacted stepper (:mod:`ponder.models.compact`) for every step, and by
:func:`run_group` for a fast full-depth pass (the same kernels, so full and compacted runs
compare kernel for kernel). The reference path (``Block.forward``) never comes here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ponder import kernels
from ponder.models.layers import AttnContext, Group

# Split the padded attention call in two groups of sequences (sorted by active count) when
# that saves more than this fraction of the padded query grid.
GROUP_SAVING = 0.25
# With one attention call, drop the halted sequences (copy the live ones' keys/values) only
# when fewer than this fraction of the sequences is live.
KEEP_ALL = 0.5
# ... and only when the padded calls are long enough for padding to cost more than a call
GROUP_MIN_QUERIES = 16
# Attention of padded query blocks up to this many queries per sequence runs as two matrix
# multiplies instead of the flash kernel (one thread, two or more threads; inference only).
SMALL_QUERIES = (2, 16)


@dataclass
class QueryGroup:
    """Sequences whose active queries share one padded attention call.

    seqs   [G] long | None   sequence ids (None: all B, in order)
    a_max  int               largest active count among them (the padded query length)
    slot   [Tg] long         each query's row in the padded ``[G·a_max]`` grid
    take   [Tg] long | None  which of the step's T query rows these are (None: all, in order)
    qmask  [G, 1, a_max, L] | [G, 1, 1, L] bool | None   attention mask of the padded queries
    """

    seqs: Optional[torch.Tensor]
    a_max: int
    slot: torch.Tensor
    take: Optional[torch.Tensor]
    qmask: Optional[torch.Tensor]


@dataclass
class StepIndex:
    """Where the query tokens of one step are; built once per step, shared by its blocks.

    rows    [T] long     flat indices (b·L + l) of the query tokens, sorted
    dense   bool         every row of the batch is a query (no gather, no padding)
    groups  list[QueryGroup]  padded attention calls (empty when dense)
    order   [T] long | None   undoes the concatenation of the groups' outputs (None: 1 group)
    qmask   mask of the dense step (None: nothing to mask)
    alive   [B] bool     sequences with a query token
    starts  [B + 1] long | None  offsets of each sequence's queries among the rows, when the
                         compiled unpadded attention runs (then ``groups`` is empty)
    pos     [T] long | None      the queries' positions (causal unpadded attention)
    """

    rows: torch.Tensor
    dense: bool
    groups: list
    order: Optional[torch.Tensor]
    qmask: Optional[torch.Tensor]
    alive: torch.Tensor
    starts: Optional[torch.Tensor] = None
    pos: Optional[torch.Tensor] = None


def mask_needed(ctx: AttnContext) -> bool:
    """Whether attention must mask anything (causality or padded keys)."""
    return ctx.causal or not bool(ctx.key_mask.all())


def build_index(active: torch.Tensor, ctx: AttnContext, *, dense: bool,
                needs_mask: Optional[bool] = None, varlen: bool = False) -> StepIndex:
    """active [B, L] bool → the step's :class:`StepIndex`. ``varlen``: the step's attention
    runs the compiled unpadded kernel (only the query offsets are needed, no padded calls)."""
    B, L = active.shape
    if needs_mask is None:
        needs_mask = mask_needed(ctx)
    flat = active.reshape(-1)
    counts = active.sum(1)
    alive = counts > 0
    if dense:
        rows = torch.arange(B * L, device=active.device)
        qmask = ctx.attn_mask if needs_mask else None
        starts = torch.arange(0, B * L + 1, L, device=active.device) if varlen else None
        # (pads are queries here; their outputs are never kept)
        return StepIndex(rows=rows, dense=True, groups=[], order=None, qmask=qmask, alive=alive,
                         starts=starts, pos=rows % L if varlen and ctx.causal else None)
    rows = flat.nonzero().view(-1)
    if varlen:
        starts = torch.zeros(B + 1, dtype=torch.long, device=active.device)
        torch.cumsum(counts, 0, out=starts[1:])
        return StepIndex(rows=rows, dense=False, groups=[], order=None, qmask=None, alive=alive,
                         starts=starts, pos=rows % L if ctx.causal else None)
    seq = torch.div(rows, L, rounding_mode="floor")
    # rank of each active token among its sequence's active tokens
    rank = (active.cumsum(1) - 1).view(-1).index_select(0, rows)
    # sequences by active count, largest first (stable: ties keep batch order); the halted
    # ones sort last
    by_count, ranked = torch.sort(counts, descending=True, stable=True)
    n_live = int(alive.sum())
    a_top = int(by_count[0])
    parts = None
    if a_top >= GROUP_MIN_QUERIES and n_live > 1:
        # best split of the count-sorted live sequences into two padded calls: the first k
        # padded to a_top, the rest to the (k+1)-th largest count
        k = torch.arange(1, n_live, device=active.device)
        cost = k * a_top + (n_live - k) * by_count[1:n_live]
        best = int(cost.argmin())  # the first minimum
        if int(cost[best]) < (1 - GROUP_SAVING) * n_live * a_top:
            parts = [(ranked[:best + 1].sort().values, a_top),
                     (ranked[best + 1:n_live].sort().values, int(by_count[best + 1]))]
    if parts is None:
        parts = [(None if n_live >= KEEP_ALL * B else alive.nonzero().view(-1), a_top)]
    groups = []
    takes = []
    for seqs, a_max in parts:
        if seqs is None:
            # attend over the whole cache: cheaper than copying the live sequences' keys and
            # values when most are live (halted sequences get padded queries, never read)
            n_seqs, take, slot_seq = B, None, seq
        else:
            n_seqs = seqs.numel()
            new_id = torch.full((B,), -1, dtype=torch.long, device=active.device)
            new_id[seqs] = torch.arange(n_seqs, device=active.device)
            if len(parts) == 1:
                take, slot_seq = None, new_id.index_select(0, seq)
            else:
                take = (new_id.index_select(0, seq) >= 0).nonzero().view(-1)
                slot_seq = new_id.index_select(0, seq.index_select(0, take))
                takes.append(take)
        slot = slot_seq * a_max + (rank if take is None else rank.index_select(0, take))
        if ctx.causal:
            # each query keeps its own row of the dense mask; padded query rows see every key
            # (never all-masked, so no NaN reaches the backward pass)
            g_rows = rows if take is None else rows.index_select(0, take)
            grid = torch.ones(n_seqs * a_max, L, dtype=torch.bool, device=active.device)
            grid.index_copy_(0, slot, ctx.attn_mask.reshape(B * L, L).index_select(0, g_rows))
            qmask = grid.view(n_seqs, 1, a_max, L)
        elif needs_mask:
            km = ctx.key_mask if seqs is None else ctx.key_mask.index_select(0, seqs)
            qmask = km[:, None, None, :]
        else:
            qmask = None
        groups.append(QueryGroup(seqs=seqs, a_max=a_max, slot=slot, take=take, qmask=qmask))
    order = torch.argsort(torch.cat(takes)) if takes else None
    return StepIndex(rows=rows, dense=False, groups=groups, order=order, qmask=None, alive=alive)


class Dispatch:
    """The attention backend of one forward pass (holds its scratch buffer).

    ``attend(q, kv, index, p)``: q [T, H, hd] (the queries of ``index.rows``, or of every row
    when the index is dense), kv [2, B, H, L, hd] the keys/values of every token → [T, D].
    """

    def __init__(self, *, ctx: AttnContext, attn, dtype: torch.dtype, device: torch.device) -> None:
        self.ctx = ctx
        self.B, self.L = ctx.key_mask.shape
        self.inplace = not torch.is_grad_enabled()
        self.needs_mask = mask_needed(ctx)
        self.small_queries = SMALL_QUERIES[0] if torch.get_num_threads() < 2 else SMALL_QUERIES[1]
        # compiled kernels (ponder.kernels): without autograd, float32 on the CPU; the unpadded
        # attention also needs a supported head size and no dropout
        self.kernels = (self.inplace and device.type == "cpu" and dtype == torch.float32
                        and kernels.load())
        # a kind with its own weights (not a softmax): its grid rule, never the kernels
        self.grid_attend = None if attn.weights == "softmax" else attn.attend_grid
        self.varlen = (self.kernels and self.grid_attend is None and attn.head_dim in kernels.HEAD_DIMS
                       and (attn.dropout == 0.0 or not attn.training))
        self.key_mask = ctx.key_mask if self.needs_mask and not bool(ctx.key_mask.all()) else None
        self.grid: Optional[torch.Tensor] = None  # padded query buffer (no autograd)

    def index(self, active: torch.Tensor, *, dense: bool) -> StepIndex:
        return build_index(active, self.ctx, dense=dense, needs_mask=self.needs_mask,
                           varlen=self.varlen)

    def attend(self, q: torch.Tensor, kv: torch.Tensor, index: StepIndex, p: float) -> torch.Tensor:
        if self.grid_attend is not None:
            return grid_attend(self.grid_attend, q, kv, index.rows, None if index.dense else index.rows,
                               self.ctx.attn_mask, self.B, self.L, p)
        B, L = self.B, self.L
        T, H, hd = q.shape
        D = H * hd
        if index.starts is not None:
            return kernels.varlen_attention(q.reshape(T, D).contiguous(), kv[0], kv[1], index.starts,
                                            pos=index.pos, key_mask=self.key_mask)
        if index.dense:
            qg = q.view(B, L, H, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(qg, kv[0], kv[1], attn_mask=index.qmask, dropout_p=p)
            return y.transpose(1, 2).reshape(-1, D)
        q = q.reshape(T, D)
        parts = []
        for g in index.groups:
            kv_g = kv if g.seqs is None else kv.index_select(1, g.seqs)
            G = kv_g.shape[1]
            q_g = q if g.take is None else q.index_select(0, g.take)
            if self.inplace:
                # a buffer allocated (zeroed) once per forward: padded rows hold stale
                # finite queries whose outputs are never read
                if self.grid is None:
                    self.grid = q.new_zeros(B * L, D)
                grid = self.grid[:G * g.a_max].index_copy_(0, g.slot, q_g)
            else:
                grid = q.new_zeros(G * g.a_max, D).index_copy(0, g.slot, q_g)
            qg = grid.view(G, g.a_max, H, hd).transpose(1, 2)
            y = self._padded(qg, kv_g[0], kv_g[1], g.qmask, p)
            parts.append(y.transpose(1, 2).reshape(-1, D).index_select(0, g.slot))
        return parts[0] if index.order is None else torch.cat(parts).index_select(0, index.order)

    def _padded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: Optional[torch.Tensor], p: float) -> torch.Tensor:
        """q [G, H, a, hd], k/v [G, H, L, hd], mask broadcastable to [G, 1, a, L] → [G, H, a, hd].

        With a few queries per sequence the CPU flash kernel's fixed cost per (sequence, head)
        dominates and it barely uses a second thread; two matrix multiplies and a softmax are
        then faster (measured: docs/performance.md). Only without autograd: a padded query
        row whose keys are all masked gives NaN here, harmless when nobody reads that row, but
        a backward pass would carry it into the gradients."""
        if not self.inplace or p > 0.0 or q.shape[2] > self.small_queries:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.matmul(scores.softmax(-1), v)


def grid_attend(rule, q: torch.Tensor, kv: torch.Tensor, rows: torch.Tensor,
                scatter: Optional[torch.Tensor], allowed: Optional[torch.Tensor], B: int, L: int,
                p: float) -> torch.Tensor:
    """Attention by a kind's own rule (``AttentionKind.attend_grid``) with every query at its
    own position: q [T, H, hd + e] the queries of flat rows ``rows`` [T] (``scatter`` None:
    T = B·L, every row in order), kv [2, B, H, L, hd], allowed [B, 1, L, L] | None → [T, D].
    Positions without a query hold zeros (finite; their outputs are dropped)."""
    T, H, hq = q.shape
    hd = kv.shape[-1]
    if scatter is None:
        grid = q.view(B, L, H, hq)
    else:
        grid = q.new_zeros(B * L, H, hq).index_copy(0, scatter, q).view(B, L, H, hq)
    a = rule(grid.transpose(1, 2), kv[0], kv[1], allowed, p)      # [B, H, L, hd]
    a = a.transpose(1, 2).reshape(B * L, H * hd)
    return a if scatter is None else a.index_select(0, scatter)


def attend_among(q: torch.Tensor, kv: torch.Tensor, enter: torch.Tensor, rows: torch.Tensor, *,
                 causal: bool, p: float, rule=None) -> torch.Tensor:
    """Attention among a subset of the tokens only (Mixture-of-Depths' routed tokens; a
    recursion's running tokens): each query sees the keys of its sequence's subset (up to
    its own position when causal).

    q [T, H, hd] and kv [T, 2·D] (keys' heads, then values') of the subset's rows, ``rows``
    [T] their sorted flat indices (``enter.reshape(-1).nonzero()``), enter [B, L] bool the
    subset → [T, D]. The rows of each sequence fill a padded ``[B, H, A, hd]`` grid in
    position order (A the largest count), one SDPA call: unmasked (or the causal kernel)
    when every sequence has A tokens, else with the grid's mask (a padded query slot sees
    itself, a zero key, so no row is all-masked and no NaN reaches the backward pass).

    ``rule``: an attention kind's own ``attend_grid`` (weights not a softmax): the subset's
    rows keep their positions in a ``[B, H, L, ·]`` grid, keys outside the subset masked."""
    B, L = enter.shape
    if rule is not None:
        D = kv.shape[1] // 2
        H = q.shape[1]
        full = kv.new_zeros(B * L, 2 * D).index_copy(0, rows, kv)
        full = full.view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)
        allowed = enter[:, None, None, :] | torch.eye(L, dtype=torch.bool, device=enter.device)
        if causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=enter.device).tril()
        return grid_attend(rule, q, full, rows, rows, allowed, B, L, p)
    T, H, hd = q.shape
    D = H * hd
    counts = enter.sum(1)
    A = int(counts.max())
    seq = torch.div(rows, L, rounding_mode="floor")
    rank = (enter.cumsum(1) - 1).view(-1).index_select(0, rows)
    slot = seq * A + rank
    # one [B·A, 3·D] grid of queries, keys and values; padded slots stay zero
    qkv = torch.cat([q.reshape(T, D), kv], dim=1)
    grid = qkv.new_zeros(B * A, 3 * D).index_copy(0, slot, qkv)
    grid = grid.view(B, A, 3, H, hd).permute(2, 0, 3, 1, 4)  # [3, B, H, A, hd]
    mask, is_causal = None, False
    if bool((counts == A).all()):
        is_causal = causal   # every slot real: the plain (causal) kernel
    else:
        valid = torch.arange(A, device=q.device)[None, :] < counts[:, None]     # [B, A]
        allowed = valid[:, None, :].expand(B, A, A)
        if causal:
            allowed = allowed & torch.ones(A, A, dtype=torch.bool, device=q.device).tril()
        mask = (allowed | torch.eye(A, dtype=torch.bool, device=q.device))[:, None]
    a = F.scaled_dot_product_attention(grid[0], grid[1], grid[2], attn_mask=mask, dropout_p=p,
                                       is_causal=is_causal)
    return a.transpose(1, 2).reshape(B * A, D).index_select(0, slot)


def run_group(group: Group, h: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """h [B, L, D] → [B, L, D]: every token through every block of ``group`` (as
    ``group(h, ctx)``), attention through the dispatcher (the compiled kernel at inference).
    Blocks with a router go through their reference (a full pass routes nothing)."""
    if not group.blocks:
        return h
    B, L, D = h.shape
    every = torch.ones(B, L, dtype=torch.bool, device=h.device)
    dispatch, index = None, None
    x = h.reshape(B * L, D)
    for block in group.blocks:
        if block.router is not None:
            x = block(x.view(B, L, D), ctx).reshape(B * L, D)
            continue
        if dispatch is None:
            dispatch = Dispatch(ctx=ctx, attn=block.attn, dtype=h.dtype, device=h.device)
            # pads are queries of a full pass: the compiled kernel only without them (it does
            # not let a pad see itself as the reference does), SDPA with the mask otherwise
            index = build_index(every, ctx, dense=True, needs_mask=dispatch.needs_mask,
                                varlen=dispatch.varlen and bool(ctx.key_mask.all()))
            rope = ctx.rope_rows(ctx.positions(B * L))
        y, kv = block.kv_rows(x, rope)
        H, hd = block.attn.n_heads, block.attn.head_dim
        kv = kv.view(B, L, 2, H, hd).permute(2, 0, 3, 1, 4)
        p = block.attn.dropout if block.attn.training else 0.0
        a = dispatch.attend(block.q_rows(y, rope), kv, index, p)
        x = block.finish(x, a, ctx)
    return x.view(B, L, D)
