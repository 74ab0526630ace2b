"""Compacted execution: each step runs the core only on the tokens that are still active.

The reference semantics are those of :class:`ponder.models.engine.Engine` (``dense``); this
module reproduces them exactly (to fp32 round-off) while doing work proportional to the
active tokens. It contains no block math of its own: every block runs through its row-level
pieces (``Block.kv_rows`` → ``Block.q_rows`` → attention through the dispatcher,
:mod:`ponder.models.dispatch` → ``Block.finish``), so any registered FFN / attention kind or
router runs here unchanged. Per step n and block b of the step's group:

- the rows whose keys/values must be recomputed are gathered (``index_select`` on a
  ``[B·L, D]`` view) into one contiguous buffer, the active tokens first (flattened across
  the batch; they are the queries, so their buffer is a slice); norms, projections and the
  FFN are plain matrix multiplies on it;
- the queries attend to their own sequence's keys/values through the dispatcher (the
  compiled unpadded kernel without autograd, padded SDPA calls otherwise);
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
caches. A group with a block router runs :meth:`CompactStepper._routed_step` (per block, the
router's pick among the active tokens are the queries; keys/values of every row, no cache;
a ``keys="routed"`` router's block runs on the gathered entering rows only), and so does
every step of a policy whose keys are the active tokens only (``Policy.keys()``).
Measurements and the reasons for the thresholds: ``docs/performance.md``.

Without autograd (``torch.no_grad`` / ``inference_mode``) the caches, the padded query grid
and the stale masks are updated in place; with autograd every update is out of place so that
gradients equal the dense ones (frozen states are detached exactly as in dense mode; the
cached keys/values of a frozen token keep their graph to the block weights, and every step
that reads them adds its contribution).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ponder.models.dispatch import Dispatch, StepIndex, attend_among
from ponder.models.layers import AttnContext, Block, Group

# Above this fraction of active tokens a step skips the query gather/scatter (measured:
# ``ponder bench`` / docs/performance.md).
DENSE_FALLBACK = 0.95
# Compute keys/values of every row in natural order (no gather, no cache write of the active
# rows) when at least this fraction of the rows needs them anyway. Measured at d_model 128:
# norm + keys/values ≈ 0.9 µs per row, the scattered cache write + gather ≈ 0.3 µs per row,
# so computing the few rows nobody needs pays from ~80% on.
FULL_REFRESH = 0.8
# Reuse the previous step's input buffer for the state (instead of copying the whole state)
# when the previous step ran fewer than this fraction of the rows.
SPARE_MAX = 0.25


def _sole_owner(t: torch.Tensor) -> bool:
    """Whether ``t`` is the only tensor holding its storage (no view, no other reference
    anywhere), so that writing into it in place can change nothing anyone else sees. False
    when this cannot be checked."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    # one reference from t, one from the temporary storage object made to ask
    return use_count(t.untyped_storage()._cdata) <= 2


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
                 dense_fallback: Optional[float] = None, active_keys: bool = False) -> None:
        self.core = core
        self.step_embedding = step_embedding
        self.ctx = ctx
        self.B, self.L = mask.shape
        self.dense_fallback = DENSE_FALLBACK if dense_fallback is None else dense_fallback
        # attention among the active tokens only (the policy's keys() == "active")
        self.active_keys = active_keys
        self.shared = max_steps < 2 or core(1) is core(2)
        self.caches: dict[int, list[torch.Tensor]] = {}
        self.stale: dict[int, torch.Tensor] = {}
        self.inplace = not torch.is_grad_enabled()
        self.n_real = int(mask.sum())
        self.mask = mask
        first = core(1).blocks[0]
        self.heads = first.attn.n_heads
        self.scratch: list[torch.Tensor] = []   # caches reused across layers (no autograd, unshared)
        dtype = next(first.parameters()).dtype
        # the attention backend (compiled kernels without autograd; see ponder.models.dispatch)
        self.dispatch = Dispatch(ctx=ctx, attn=first.attn, dtype=dtype, device=mask.device)
        self.kernels = self.dispatch.kernels
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
        ``memory`` [B, L, D] (h at frozen rows, unless ``Decision.memory_frozen``): the source
        of the first block's keys/values instead of h (``Decision.memory``); queries,
        residual and MLP use h.

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
        group = self.core(n)
        if self.active_keys or any(block.router is not None for block in group.blocks):
            return self._routed_step(n, h, active, group, memory)
        dense = n_active >= self.dense_fallback * self.n_real
        index = self.dispatch.index(active, dense=dense)
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
        queries = None if dense else index.rows
        rope = rope_q = None
        if self.ctx.rope is not None:
            rope = self.ctx.rope_rows(self.ctx.positions(B * L) if refresh is None else refresh % L)
            # the query rows' tables: a selection of every row's, or the first rows' (queries
            # first among the refreshed rows)
            if queries is not None and refresh is None:
                rope_q = tuple(t.index_select(0, queries) for t in rope)
            else:
                rope_q = tuple(t[:n_active] for t in rope)
        # the first block's keys/values source, gathered like x_r (h + e on active rows)
        m_r = None if memory is None else self._like_rows(memory, e, refresh, act_flat, every,
                                                           n_active)
        # cache rows written: the frozen ones (``keep``) when keys/values of every row are
        # computed, else every refreshed row (``keep`` is among them)
        rows = {"refresh": refresh, "queries": queries, "keep": keep, "rope": rope,
                "rope_q": rope_q}
        blocks = list(group.blocks)
        frozen = None
        for i, block in enumerate(blocks):
            self.ctx.count_block(block, active)
            self.ctx.set_entering(active)
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
        """One block of a step, from the block's row-level pieces.

        x_r [R, D]  block input of the rows whose keys/values are computed: every row in
                    natural order (R = B·L; ``rows["refresh"]`` None), or the gathered
                    refreshed rows with the n_q queries first
        kv_src [R, D] | None  the same rows of the keys/values source (None: x_r)
        → the block output of the query rows [n_q, D] (every row when the step is dense)
        """
        B, L = self.B, self.L
        H, hd = block.attn.n_heads, block.attn.head_dim
        y_r, kv_r = block.kv_rows(x_r, rows["rope"], source=kv_src)
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
        q = block.q_rows(y_q, rows["rope_q"] if queries is not None or rows["refresh"] is not None
                         else rows["rope"])
        p = block.attn.dropout if block.attn.training else 0.0
        a = self.dispatch.attend(q, kv, index, p)
        return block.finish(x_q, a, self.ctx, queries)

    def _routed_step(self, n: int, h: torch.Tensor, active: torch.Tensor, group: Group,
                     memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A step whose group has routed blocks: per block the router picks, among the active
        tokens, the ones that enter; only they are queries and run the FFN. Keys/values of
        every row are computed per block (a routed block's rows change unevenly, so no cache
        is kept); keys are every token (state copying) or, for ``keys="routed"`` routers, the
        entering ones only — as the dense reference (``Engine.run_step``). With
        ``active_keys`` every block's attention runs among its entering tokens only."""
        B, L = self.B, self.L
        D = h.shape[-1]
        act_flat = active.reshape(-1)
        x = h.reshape(B * L, D)
        e = self.step_embedding(n) if self.step_embedding is not None else None
        if e is not None:
            x = torch.addcmul(x, act_flat[:, None].to(h.dtype), e)
        rope = self.ctx.rope_rows(self.ctx.positions(B * L))
        # the first block's keys/values source (see step), all rows in natural order
        source = None if memory is None else self._like_rows(memory, e, None, act_flat, False, 0)
        for j, block in enumerate(group.blocks):
            route = None
            enter, ctx, dispatch = active, self.ctx, self.dispatch
            # the keys: every real token (None), the active ones (the policy's keys "active"),
            # or the entering ones (a keys="routed" router)
            key_set = active if self.active_keys else None
            if block.router is not None:
                route = block.router(x.view(B, L, D), active,
                                     self.ctx.keys_of(active) if self.active_keys else self.ctx)
                self.ctx.count_flops(active, block.router.flops_per_token())
                enter = route.enter & active
                if block.router.keys == "routed":
                    key_set = enter
            if key_set is not None:
                ctx = self.ctx.keys_of(key_set)
            self.ctx.count_block(block, enter, ctx)
            self.ctx.set_entering(enter)
            if not bool(enter.any()):
                continue
            if key_set is enter:
                # attention among the entering tokens only: the block on their rows alone
                x = self._routed_keys_block(block, x, enter, route, rope,
                                            source if j == 0 else None)
                continue
            if key_set is not None:
                dispatch = Dispatch(ctx=ctx, attn=block.attn, dtype=h.dtype, device=h.device)
            index = dispatch.index(enter, dense=False)
            y, kv_r = block.kv_rows(x, rope, source=source if j == 0 else None)
            H, hd = block.attn.n_heads, block.attn.head_dim
            kv = kv_r.view(B, L, 2, H, hd).permute(2, 0, 3, 1, 4)
            q_rows = index.rows
            rope_q = None if rope is None else tuple(t.index_select(0, q_rows) for t in rope)
            q = block.q_rows(y.index_select(0, q_rows), rope_q)
            p = block.attn.dropout if block.attn.training else 0.0
            x_q = x.index_select(0, q_rows)
            out = block.finish(x_q, dispatch.attend(q, kv, index, p), ctx, q_rows)
            if route is not None and route.weight is not None:
                w = route.weight.reshape(-1).index_select(0, q_rows)[:, None]
                out = x_q + w * (out - x_q)
            x = x.index_copy(0, q_rows, out)
        if self.shared:
            # the cache never saw these rows' new states
            self.stale.pop(id(group), None)
            self.caches.pop(id(group), None)
        out_state = x.view(B, L, D)
        self._remember(h, out_state, None)
        return out_state

    def _routed_keys_block(self, block: Block, x: torch.Tensor, enter: torch.Tensor, route,
                           rope, source: Optional[torch.Tensor]) -> torch.Tensor:
        """A block whose attention runs among the entering tokens only (``keys="routed"``,
        Mixture-of-Depths; or a policy whose keys are the active tokens): everything — norm,
        keys/values, queries, attention, FFN — on the gathered entering rows, so the block
        costs what its entering tokens cost, in training too. x [B·L, D] block input, enter
        [B, L] bool → x with the entering rows updated (the dense reference's
        ``ctx.keys_of(enter)``; attention through :func:`ponder.models.dispatch.attend_among`)."""
        rows = enter.reshape(-1).nonzero().view(-1)  # sorted: sequence, then position
        x_q = x.index_select(0, rows)
        rope_q = None if rope is None else tuple(t.index_select(0, rows) for t in rope)
        src = None if source is None else source.index_select(0, rows)
        y, kv = block.kv_rows(x_q, rope_q, source=src)
        q = block.q_rows(y, rope_q)
        p = block.attn.dropout if block.attn.training else 0.0
        rule = None if block.attn.weights == "softmax" else block.attn.attend_grid
        a = attend_among(q, kv, enter, rows, causal=self.ctx.causal, p=p, rule=rule)
        out = block.finish(x_q, a, self.ctx, rows)
        if route is not None and route.weight is not None:
            w = route.weight.reshape(-1).index_select(0, rows)[:, None]
            out = x_q + w * (out - x_q)
        return x.index_copy(0, rows, out)

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

