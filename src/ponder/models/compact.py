"""Compacted execution: each step runs the core only on the tokens that are still active.

The reference semantics are those of :class:`ponder.models.engine.Engine` (``dense``); this
module reproduces them exactly (to fp32 round-off) while doing work proportional to the
active tokens. Per step n and block b of the step's group:

- the rows whose keys/values must be recomputed are gathered (``index_select`` on a
  ``[B·L, D]`` view) into one contiguous buffer, the active tokens first (flattened across
  the batch; they are the queries, so their buffer is a slice); norms, projections and the
  MLP are plain matrix multiplies on it;
- the queries attend to their own sequence's keys/values: without autograd, through the
  compiled unpadded attention of :mod:`ponder.kernels` (one call, the queries stay in their
  buffer, grouped by sequence); otherwise they are padded per sequence to the largest active
  count of the step (``[B', H, A_max, hd]``) for one ``scaled_dot_product_attention`` call —
  two calls for two groups of sequences sorted by active count when that saves enough
  padding; fully halted sequences are dropped when few are live;
- keys/values of every token (frozen ones included: state copying) live in a per-block cache
  ``[2, B, H, L, hd]``. A row is recomputed only when its block input changed since the cache
  last saw it (``stale`` rows): for a weight-shared core these are the tokens active at the
  previous step; a block seen for the first time (every layer of a stacked model) computes
  the rows of the sequences still alive;
- the outputs are scattered back (``index_copy_``, or the compiled ``copy_rows``; the cache
  writes likewise) into a ``[B, L, D]`` state of its own that
  the policy sees exactly as in dense mode (without autograd, the engine's buffer of the step
  before last when nobody else holds it; see ``CompactStepper._state_buffer``). Policies
  never change.

When nearly every token is active (fraction ≥ ``DENSE_FALLBACK``) the step runs on every row
without gather, padding or scatter (frozen rows copied back), still filling the
caches. Measurements and the reasons for the thresholds: ``docs/performance.md``.

Without autograd (``torch.no_grad`` / ``inference_mode``) the caches, the padded query grid
and the stale masks are updated in place; with autograd every update is out of place so that
gradients equal the dense ones (frozen states are detached exactly as in dense mode; the
cached keys/values of a frozen token keep their graph to the block weights, and every step
that reads them adds its contribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ponder import kernels
from ponder.models.layers import AttnContext, Block, Group

# Above this fraction of active tokens a step skips the query gather/scatter (measured:
# ``ponder bench`` / docs/performance.md).
DENSE_FALLBACK = 0.95
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
# Compute keys/values of every row in natural order (no gather, no cache write of the active
# rows) when at least this fraction of the rows needs them anyway. Measured at d_model 128:
# norm + keys/values ≈ 0.9 µs per row, the scattered cache write + gather ≈ 0.3 µs per row,
# so computing the few rows nobody needs pays from ~80% on.
FULL_REFRESH = 0.8
# Reuse the previous step's input buffer for the state (instead of copying the whole state)
# when the previous step ran fewer than this fraction of the rows.
SPARE_MAX = 0.25


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
    """Where the active tokens of one step are; built once per step, shared by its blocks.

    rows    [T] long     flat indices (b·L + l) of the active tokens, sorted
    dense   bool         every row of the batch is a query (no gather, no padding)
    groups  list[QueryGroup]  padded attention calls (empty when dense)
    order   [T] long | None   undoes the concatenation of the groups' outputs (None: 1 group)
    qmask   mask of the dense step (None: nothing to mask)
    alive   [B] bool     sequences with an active token
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


def _needs_mask(ctx: AttnContext) -> bool:
    return ctx.causal or not bool(ctx.key_mask.all())


def _sole_owner(t: torch.Tensor) -> bool:
    """Whether ``t`` is the only tensor holding its storage (no view, no other reference
    anywhere), so that writing into it in place can change nothing anyone else sees. False
    when this cannot be checked."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    # one reference from t, one from the temporary storage object made to ask
    return use_count(t.untyped_storage()._cdata) <= 2


def build_index(active: torch.Tensor, ctx: AttnContext, *, dense: bool,
                needs_mask: Optional[bool] = None, varlen: bool = False) -> StepIndex:
    """active [B, L] bool → the step's :class:`StepIndex`. ``varlen``: the step's attention
    runs the compiled unpadded kernel (only the query offsets are needed, no padded calls)."""
    B, L = active.shape
    if needs_mask is None:
        needs_mask = _needs_mask(ctx)
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


class CompactStepper:
    """Runs steps of a core on the active tokens only (one forward pass; holds its caches).

    core(n) → Group of step n; step_embedding(n) → [D] or None. ``shared``: the same Group
    object is used at several steps, so its keys/values are worth caching across steps.

    Per block a key/value cache ``[2, B, H, L, hd]``; per group of blocks ``stale [B·L] bool``, the
    rows whose block input changed since their keys/values were computed (all blocks of a
    group see the same rows change).
    """

    def __init__(self, *, core: Callable[[int], Group],
                 step_embedding: Optional[Callable[[int], Optional[torch.Tensor]]],
                 ctx: AttnContext, mask: torch.Tensor, max_steps: int,
                 dense_fallback: Optional[float] = None) -> None:
        self.core = core
        self.step_embedding = step_embedding
        self.ctx = ctx
        self.B, self.L = mask.shape
        self.dense_fallback = DENSE_FALLBACK if dense_fallback is None else dense_fallback
        self.shared = max_steps < 2 or core(1) is core(2)
        self.caches: dict[int, list[torch.Tensor]] = {}
        self.stale: dict[int, torch.Tensor] = {}
        self.inplace = not torch.is_grad_enabled()
        self.n_real = int(mask.sum())
        self.heads = core(1).blocks[0].attn.n_heads
        self.scratch: list[torch.Tensor] = []   # caches reused across layers (no autograd, unshared)
        self.grid: Optional[torch.Tensor] = None  # padded query buffer (no autograd)
        self.needs_mask = _needs_mask(ctx)
        self.small_queries = SMALL_QUERIES[0] if torch.get_num_threads() < 2 else SMALL_QUERIES[1]
        # compiled kernels (ponder.kernels): without autograd, float32 on the CPU; the unpadded
        # attention also needs a supported head size and no dropout
        attn = core(1).blocks[0].attn
        self.kernels = (self.inplace and mask.device.type == "cpu"
                        and attn.q.weight.dtype == torch.float32 and kernels.load())
        self.varlen = self.kernels and attn.head_dim in kernels.HEAD_DIMS and attn.dropout == 0.0
        self.key_mask = ctx.key_mask if self.needs_mask and not bool(ctx.key_mask.all()) else None
        # state buffers reused across steps without autograd (see _state_buffer)
        self._last_out: Optional[torch.Tensor] = None
        self._spare: Optional[torch.Tensor] = None
        self._spare_rows: Optional[torch.Tensor] = None
        self._row_base: Optional[torch.Tensor] = None
        self._row_offset: Optional[torch.Tensor] = None

    # -- one step -----------------------------------------------------------------------
    def step(self, n: int, h: torch.Tensor, active: torch.Tensor,
             memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [B, L, D], active [B, L] bool → state after step n [B, L, D] (frozen rows kept).
        ``memory`` [B, L, D] (equal to h at frozen rows): the source of the first block's
        keys/values instead of h (``Decision.memory``); queries, residual and MLP use h.

        Three ways to run a step, chosen by how many rows need new keys/values:

        - ``dense`` (≥ DENSE_FALLBACK of the real tokens active): every row runs the block in
          natural order; frozen rows keep their state (copied back);
        - ``full`` (the rows needing keys/values — active ones, and the frozen ones whose state
          changed since the cache saw them — are ≥ FULL_REFRESH of all rows): norm and
          keys/values of every row in natural order, queries, attention output and MLP on
          the active rows only;
        - ``partial``: norm and keys/values of the needed rows only, gathered into one
          buffer (active rows first), written into the cache that attention reads.

        In the first two, attention reads the fresh keys/values directly (no cache write for
        the active rows: a row active now is refreshed again at the next step before anyone
        reads it); the cache only receives the rows that froze (shared core).
        """
        B, L = self.B, self.L
        D = h.shape[-1]
        n_active = int(active.sum())
        if n_active == 0:
            return h
        dense = n_active >= self.dense_fallback * self.n_real
        index = build_index(active, self.ctx, dense=dense, needs_mask=self.needs_mask,
                            varlen=self.varlen)
        group = self.core(n)
        caches, stale = self._caches(group, h)
        h_flat = h.reshape(B * L, D)
        act_flat = active.reshape(-1)
        e = self.step_embedding(n) if self.step_embedding is not None else None
        every = n_active == B * L  # no pads, nobody frozen: nothing to mask
        # frozen rows whose keys/values are out of date (their state changed since the cache
        # last saw them), in sequences that still run
        if dense:
            extra = (stale & ~act_flat).nonzero().view(-1)
        else:
            alive_rows = index.alive[:, None].expand(B, L).reshape(-1)
            extra = (stale & ~act_flat & alive_rows).nonzero().view(-1)
        full = dense or n_active + extra.numel() >= FULL_REFRESH * B * L
        # only a shared core's cache is read at later steps
        keep = extra if self.shared and extra.numel() else None
        if full:
            refresh = None
            if e is None:
                x_r = h_flat
            else:
                # h + e on active rows, h exactly on frozen ones (h + 0·e), in one pass
                x_r = h_flat + e if every else torch.addcmul(h_flat, act_flat[:, None].to(h.dtype), e)
        else:
            # refreshed rows: the active ones first (they are the queries: x_q = x_r[:T]), then
            # the stale rows of sequences that still have an active token
            refresh = torch.cat([index.rows, extra]) if extra.numel() else index.rows
            x_r = h_flat.index_select(0, refresh)
            if e is not None:
                # active tokens run on h + e_n; frozen ones show exactly their frozen state
                if self.inplace:
                    x_r[:n_active] += e
                else:
                    x_r = torch.cat([x_r[:n_active] + e, x_r[n_active:]])
        # the first block's keys/values source, gathered like x_r (h + e on active rows)
        m_r = None if memory is None else self._like_rows(memory, e, refresh, act_flat, every,
                                                           n_active)
        rope_pos = None if self.ctx.rope is None else (
            torch.arange(B * L, device=h.device) % L if refresh is None else refresh % L)
        # cache rows written: the frozen ones (``keep``) when keys/values of every row are
        # computed, else every refreshed row (``keep`` is among them)
        rows = {"refresh": refresh, "queries": None if dense else index.rows, "keep": keep,
                "pos": rope_pos}
        blocks = list(group.blocks)
        frozen = None
        for i, block in enumerate(blocks):
            out = self._block(block, x_r, n_active, rows, index, caches, i,
                              kv_src=m_r if i == 0 else None)
            if dense:
                if not every:
                    # frozen rows keep their state (few here, at most 5% of the real tokens plus
                    # the pads: copying them back is several times cheaper than torch.where)
                    frozen = (~act_flat).nonzero().view(-1) if frozen is None else frozen
                    out = self._set_rows(out, frozen, x_r.index_select(0, frozen))
                x_r = out
            elif i + 1 < len(blocks):
                if full:
                    x_r = x_r.index_copy(0, index.rows, out)
                elif self.inplace:
                    x_r[:n_active] = out
                else:
                    x_r = torch.cat([out, x_r[n_active:]])
            x_q = out
        # the refreshed rows are current now, except the active ones: their input changes
        if extra.numel():
            stale = self._set_rows(stale, extra, False)
        stale = self._set_rows(stale, index.rows, True)
        if self.shared:
            self.stale[id(group)] = stale
        if dense:
            out_state = x_q.view(B, L, D)
            self._remember(h, out_state, None)
            return out_state
        if self.inplace:
            # a full step's last block input, when it is a fresh buffer (a step embedding was
            # added, or an earlier block ran), equals h on the frozen rows: it becomes the
            # state, no copy of h needed
            out_flat = x_r if full and x_r is not h_flat else self._state_buffer(h, act_flat)
            self._set_rows(out_flat, index.rows, x_q)
            out_state = out_flat.view(B, L, D)
            self._remember(h, out_state, index.rows)
            return out_state
        return h_flat.index_copy(0, index.rows, x_q).view(B, L, D)

    def _like_rows(self, t: torch.Tensor, e: Optional[torch.Tensor], refresh: Optional[torch.Tensor],
                   act_flat: torch.Tensor, every: bool, n_active: int) -> torch.Tensor:
        """The rows of t [B, L, D] a step's x_r holds of h: all in natural order (``refresh``
        None) or the refreshed rows (active first), with e added to the active ones."""
        flat = t.reshape(self.B * self.L, -1)
        if refresh is None:
            if e is None:
                return flat
            return flat + e if every else torch.addcmul(flat, act_flat[:, None].to(t.dtype), e)
        rows = flat.index_select(0, refresh)
        if e is None:
            return rows
        return torch.cat([rows[:n_active] + e, rows[n_active:]])

    def _set_rows(self, t: torch.Tensor, rows: torch.Tensor, value) -> torch.Tensor:
        """t with rows ``rows`` (dim 0) set to ``value``: a scalar, or a tensor of those rows."""
        if isinstance(value, torch.Tensor):
            if self.kernels and t.dim() == 2:
                torch.ops.ponder_kernels.copy_rows(t, rows, value.contiguous())
                return t
            return t.index_copy_(0, rows, value) if self.inplace else t.index_copy(0, rows, value)
        return t.index_fill_(0, rows, value) if self.inplace else t.index_fill(0, rows, value)

    # -- the state buffers (no autograd) ------------------------------------------------
    def _state_buffer(self, h: torch.Tensor, act_flat: torch.Tensor) -> torch.Tensor:
        """A ``[B·L, D]`` buffer equal to ``h`` except possibly at this step's active rows
        (which the caller overwrites).

        The step's output must be a tensor of its own (``h`` stays the policy's ``view.prev``),
        but copying the whole state every step costs a full memory pass per step even when a
        handful of tokens run. When ``h`` is the output of our previous step, the input of that
        step (a buffer of ours that nobody else holds any more: checked on its storage's use
        count, so a policy keeping ``view.prev`` or ``view.h`` across steps is safe) differs
        from ``h`` only at the rows that step ran: copy back those of them that are frozen now.
        """
        B, L = self.B, self.L
        spare, rows = self._spare, self._spare_rows
        if (spare is not None and h is self._last_out and rows is not None
                and rows.numel() < SPARE_MAX * B * L and _sole_owner(spare)):
            flat = spare.view(B * L, -1)
            # rows the previous step ran and this step does not: they froze at h
            frozen = rows[~act_flat.index_select(0, rows)]
            if frozen.numel():
                self._set_rows(flat, frozen, h.reshape(B * L, -1).index_select(0, frozen))
            self._spare = None  # it is the output now
            return flat
        return h.reshape(B * L, -1).clone()

    def _remember(self, h: torch.Tensor, out: torch.Tensor, rows: Optional[torch.Tensor]) -> None:
        """After a step: ``out`` = ``h`` with ``rows`` replaced (None: any row may differ). The
        input ``h`` becomes the spare buffer of the next step if it is one of ours."""
        if not self.inplace:
            return
        self._spare = h if (h is self._last_out and h is not None) else None
        self._spare_rows = rows
        self._last_out = out

    # -- helpers ------------------------------------------------------------------------
    def _caches(self, group: Group, h: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The key/value caches ``[2, B, H, L, hd]`` of the group's blocks (contiguous per
        head: the attention kernel reads them fastest so) and the group's stale rows; kept
        across steps for a shared core, fresh (every row stale) for distinct layers."""
        key = id(group)
        if self.shared and key in self.caches:
            return self.caches[key], self.stale[key]
        shape = (2, self.B, self.heads, self.L, h.shape[-1] // self.heads)
        n = len(group.blocks)
        if self.shared or not self.inplace:
            caches = [h.new_zeros(shape) for _ in range(n)]
        else:
            # every row a later read needs is recomputed first: reuse the buffers
            while len(self.scratch) < n:
                self.scratch.append(h.new_zeros(shape))
            caches = self.scratch[:n]
        stale = torch.ones(self.B * self.L, dtype=torch.bool, device=h.device)
        if self.shared:
            self.caches[key], self.stale[key] = caches, stale
        return caches, stale

    def _cache_rows(self, refresh: torch.Tensor) -> torch.Tensor:
        """refresh [R] flat token rows → [R, 2H] rows of a flat ``[2·B·H·L, hd]`` cache, in the
        order of ``kv(x)`` viewed as ``[R, 2H, hd]`` (keys' heads, then values' heads)."""
        if self._row_base is None:
            # built once per forward: token b·L + l → b·H·L + l; (part, head) j → offset
            B, L, H = self.B, self.L, self.heads
            tok = torch.arange(B * L, device=refresh.device)
            self._row_base = tok + torch.div(tok, L, rounding_mode="floor") * ((H - 1) * L)
            j = torch.arange(2 * H, device=refresh.device)
            self._row_offset = torch.div(j, H, rounding_mode="floor") * (B * H * L) + (j % H) * L
        return self._row_base.index_select(0, refresh)[:, None] + self._row_offset[None, :]

    def _block(self, block: Block, x_r: torch.Tensor, n_q: int, rows: dict, index: StepIndex,
               caches: list[torch.Tensor], i: int,
               kv_src: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One pre-norm block of a step.

        x_r [R, D]  block input of the rows whose keys/values are computed: every row in
                    natural order (R = B·L; ``rows["refresh"]`` None), or the gathered
                    refreshed rows with the n_q queries first
        kv_src [R, D] | None  the same rows of the keys/values source (None: x_r)
        → the block output of the query rows [n_q, D] (every row when the step is dense)
        """
        attn = block.attn
        B, L = self.B, self.L
        D = x_r.shape[-1]
        H, hd = attn.n_heads, attn.head_dim
        y_r = block.norm1(x_r)
        kv_r = attn.kv(y_r if kv_src is None else block.norm1(kv_src))
        rope = self.ctx.rope
        if rope is not None:
            cos, sin = rope
            cos_r, sin_r = cos.index_select(0, rows["pos"]), sin.index_select(0, rows["pos"])
            k_r = _rotate(kv_r[:, :D].reshape(-1, H, hd), cos_r[:, None], sin_r[:, None])
            kv_r = torch.cat([k_r.reshape(-1, D), kv_r[:, D:]], dim=1)
        queries = rows["queries"]
        if rows["refresh"] is None:
            # keys/values of every row, in natural order: attention reads them as they are
            kv = kv_r.view(B, L, 2, H, hd).permute(2, 0, 3, 1, 4)
            if rows["keep"] is not None:
                # the rows that froze are read again at later steps: into the cache
                caches[i] = self._write(caches[i], rows["keep"], kv_r, src=rows["keep"])
            if queries is None:
                x_q, y_q = x_r, y_r
            else:
                x_q, y_q = x_r.index_select(0, queries), y_r.index_select(0, queries)
        else:
            caches[i] = self._write(caches[i], rows["refresh"], kv_r)
            kv = caches[i]
            x_q, y_q = x_r[:n_q], y_r[:n_q]
        q = attn.q(y_q)
        if rope is not None:
            if queries is not None and rows["refresh"] is None:
                cos_q, sin_q = cos_r.index_select(0, queries), sin_r.index_select(0, queries)
            else:
                cos_q, sin_q = cos_r[:q.shape[0]], sin_r[:q.shape[0]]
            q = _rotate(q.view(-1, H, hd), cos_q[:, None], sin_q[:, None]).reshape(-1, D)
        p = attn.dropout if attn.training else 0.0
        if index.starts is not None:
            y = kernels.varlen_attention(q.contiguous(), kv[0], kv[1], index.starts, pos=index.pos,
                                         key_mask=self.key_mask)
        elif index.dense:
            qg = q.view(B, L, H, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(qg, kv[0], kv[1], attn_mask=index.qmask, dropout_p=p)
            y = y.transpose(1, 2).reshape(-1, D)
        else:
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
                y = self._attend(qg, kv_g[0], kv_g[1], g.qmask, p)
                parts.append(y.transpose(1, 2).reshape(-1, D).index_select(0, g.slot))
            y = parts[0] if index.order is None else torch.cat(parts).index_select(0, index.order)
        x_q = x_q + block.drop(attn.o(y))
        return x_q + block.mlp(block.norm2(x_q))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
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

    def _write(self, cache: torch.Tensor, tokens: torch.Tensor, kv: torch.Tensor,
               src: Optional[torch.Tensor] = None) -> torch.Tensor:
        """cache [2, B, H, L, hd] with the keys/values of flat tokens ``tokens`` [R] set from kv
        [·, 2D] (its rows ``src``, or its first R rows in order)."""
        if self.kernels:
            torch.ops.ponder_kernels.write_kv(cache, tokens, kv, src)
            return cache
        hd = cache.shape[-1]
        rows = self._cache_rows(tokens).view(-1)
        kv = kv if src is None else kv.index_select(0, src)
        if self.inplace:
            cache.view(-1, hd).index_copy_(0, rows, kv.reshape(-1, hd))
            return cache
        return cache.reshape(-1, hd).index_copy(0, rows, kv.reshape(-1, hd)).view(cache.shape)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [R, H, hd] rotated by per-row angles cos/sin [R, 1, hd/2] (as ``layers.apply_rotary``)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
