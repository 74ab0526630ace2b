"""Compacted execution: each step runs the core only on the tokens that are still active.

The reference semantics are those of :class:`ponder.models.engine.Engine` (``dense``); this
module reproduces them exactly (to fp32 round-off) while doing work proportional to the
active tokens. Per step n and block b of the step's group:

- the active tokens are gathered, flattened across the batch (``index_select`` on a
  ``[B·L, D]`` view), into one contiguous ``[T, D]`` buffer; norms, projections and the MLP
  are plain matrix multiplies on it;
- their queries are padded per sequence to the largest active count of the step
  (``[B', H, A_max, hd]``, B' the sequences that still have active tokens; fully halted
  sequences are dropped) for one ``scaled_dot_product_attention`` call against their own
  sequence's keys/values;
- keys/values of every token (frozen ones included: state copying) live in a per-block cache
  ``[B·L, 2D]``. A row is recomputed only when its block input changed since the cache last
  saw it (``stale`` rows): for a weight-shared core these are the tokens active at the
  previous step; a block seen for the first time (every layer of a stacked model) computes
  the rows of the sequences still alive;
- the outputs are scattered back (``index_copy_``) into a fresh ``[B, L, D]`` state that the
  policy sees exactly as in dense mode. Policies never change.

When nearly every token is active (fraction ≥ ``DENSE_FALLBACK``) the step runs unpadded on
every row — the same code path with the identity gather skipped, which is what dense costs.

Without autograd (``torch.no_grad`` / ``inference_mode``) the caches are updated in place;
with autograd every update is out of place so that gradients equal the dense ones (frozen
states are detached exactly as in dense mode; the cached keys/values of a frozen token keep
their graph to the block weights, and every step that reads them adds its contribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F

from ponder.models.layers import AttnContext, Block, Group
from ponder.policies.base import View

if TYPE_CHECKING:  # engine imports this module lazily; no import cycle at run time
    from ponder.models.engine import Engine, EngineResult

# Above this fraction of active tokens a step skips the query gather/scatter (measured:
# ``ponder bench`` / docs/performance.md).
DENSE_FALLBACK = 0.95


@dataclass
class StepIndex:
    """Where the active tokens of one step are; built once per step, shared by its blocks.

    rows     [T] long          flat indices (b·L + l) of the active tokens, sorted
    dense    bool              every row of the batch is a query (no padding, no scatter)
    live     [B'] long | None  sequences with an active token (None: all B)
    slot     [T] long          index of each active token in the padded [B'·A_max] query grid
    a_max    int               largest number of active tokens in one sequence
    qmask    [B', 1, A_max|1, L] bool | None   attention mask of the padded queries
    pos      [T] long          position of each active token in its sequence
    """

    rows: torch.Tensor
    dense: bool
    live: Optional[torch.Tensor]
    slot: torch.Tensor
    a_max: int
    qmask: Optional[torch.Tensor]
    pos: torch.Tensor


def build_index(active: torch.Tensor, ctx: AttnContext, *, dense: bool) -> StepIndex:
    """active [B, L] bool → the step's :class:`StepIndex`."""
    B, L = active.shape
    device = active.device
    if dense:
        rows = torch.arange(B * L, device=device)
        pos = rows % L
        if ctx.causal or not bool(ctx.key_mask.all()):
            qmask = ctx.attn_mask
        else:
            qmask = None
        return StepIndex(rows=rows, dense=True, live=None, slot=rows, a_max=L, qmask=qmask, pos=pos)
    flat = active.reshape(-1)
    rows = flat.nonzero().squeeze(1)
    counts = active.sum(1)
    live_mask = counts > 0
    n_live = int(live_mask.sum())
    a_max = int(counts.max())
    seq = torch.div(rows, L, rounding_mode="floor")
    pos = rows - seq * L
    # rank of each active token among its sequence's active tokens
    rank = (active.cumsum(1) - 1).reshape(-1).index_select(0, rows)
    if n_live < B:
        live = live_mask.nonzero().squeeze(1)
        new_id = torch.cumsum(live_mask.long(), 0) - 1           # old sequence → live index
        seq_live = new_id.index_select(0, seq)
    else:
        live, seq_live = None, seq
    slot = seq_live * a_max + rank
    if ctx.causal:
        # each query keeps its own row of the dense mask; padded query rows see every key
        # (never all-masked, so no NaN reaches the backward pass)
        grid = torch.ones(n_live * a_max, L, dtype=torch.bool, device=device)
        grid.index_copy_(0, slot, ctx.attn_mask.reshape(B * L, L).index_select(0, rows))
        qmask = grid.view(n_live, 1, a_max, L)
    elif not bool(ctx.key_mask.all()):
        km = ctx.key_mask if live is None else ctx.key_mask.index_select(0, live)
        qmask = km[:, None, None, :]
    else:
        qmask = None
    return StepIndex(rows=rows, dense=False, live=live, slot=slot, a_max=a_max, qmask=qmask, pos=pos)


class KVCache:
    """Keys/values ``[B·L, 2D]`` of one block for every token, with the rows that are stale.

    ``stale [B·L] bool``: rows whose block input changed since their keys/values were computed.
    """

    def __init__(self, *, rows: int, width: int, like: torch.Tensor) -> None:
        self.kv = like.new_zeros(rows, width)
        self.stale = torch.ones(rows, dtype=torch.bool, device=like.device)


class CompactStepper:
    """Runs steps of a core on the active tokens only (one forward pass; holds its caches).

    core(n) → Group of step n; step_embedding(n) → [D] or None. ``shared``: the same Group
    object is used at several steps, so its keys/values are worth caching across steps.
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
        self.caches: dict[int, list[KVCache]] = {}
        self.inplace = not torch.is_grad_enabled()
        self.n_real = int(mask.sum())

    # -- one step -----------------------------------------------------------------------
    def step(self, n: int, h: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """h [B, L, D], active [B, L] bool → state after step n [B, L, D] (frozen rows kept)."""
        B, L = self.B, self.L
        D = h.shape[-1]
        n_active = int(active.sum())
        if n_active == 0:
            return h
        dense = n_active >= self.dense_fallback * self.n_real
        index = build_index(active, self.ctx, dense=dense)
        group = self.core(n)
        caches = self._caches(group, h)
        stale = caches[0].stale  # every block of a group has seen the same rows
        h_flat = h.reshape(B * L, D)
        act_flat = active.reshape(-1)
        # rows whose keys/values are (re)computed: the active ones and the stale ones of
        # sequences that still have an active token (None: every row)
        refresh: Optional[torch.Tensor] = None
        if not dense:
            need = act_flat | stale
            if index.live is not None:
                need = need & active.any(1, keepdim=True).expand(B, L).reshape(-1)
            if not bool(need.all()):
                refresh = need.nonzero().squeeze(1)
        if refresh is None:
            x_r, act_r, pos_r = h_flat, act_flat, None
            sub = None if dense else index.rows
        else:
            x_r = h_flat.index_select(0, refresh)
            act_r = act_flat.index_select(0, refresh)
            pos_r = refresh % L
            where_r = torch.empty(B * L, dtype=torch.long, device=h.device)
            where_r.index_copy_(0, refresh, torch.arange(refresh.numel(), device=h.device))
            sub = where_r.index_select(0, index.rows)
        e = self.step_embedding(n) if self.step_embedding is not None else None
        if e is not None:
            # active tokens run on h + e_n; frozen ones show exactly their frozen state
            x_r = torch.where(act_r[:, None], x_r + e, x_r)
        x_q = x_r if sub is None else x_r.index_select(0, sub)
        for i, block in enumerate(group.blocks):
            out = self._block(block, x_r, x_q, sub, refresh, pos_r, index, caches[i])
            if dense:
                out = torch.where(act_r[:, None], out, x_r)  # frozen rows keep their state
            x_q = out
            if i + 1 < len(group.blocks):
                x_r = out if sub is None else x_r.index_copy(0, sub, out)
        # the refreshed rows are now current, except the active ones: their input changes
        if refresh is None:
            new_stale = act_flat.clone()
        else:
            new_stale = stale.index_fill(0, refresh, False) | act_flat
        for c in caches:
            c.stale = new_stale
        if dense:
            return x_q.view(B, L, D)
        if self.inplace:
            out_flat = h_flat.clone()
            out_flat.index_copy_(0, index.rows, x_q)
        else:
            out_flat = h_flat.index_copy(0, index.rows, x_q)
        return out_flat.view(B, L, D)

    # -- helpers ------------------------------------------------------------------------
    def _caches(self, group: Group, h: torch.Tensor) -> list[KVCache]:
        """The caches of the group's blocks (kept across steps for a shared core)."""
        key = id(group)
        if self.shared and key in self.caches:
            return self.caches[key]
        caches = [KVCache(rows=self.B * self.L, width=2 * h.shape[-1], like=h) for _ in group.blocks]
        if self.shared:
            self.caches[key] = caches
        return caches

    def _block(self, block: Block, x_r: torch.Tensor, x_q: torch.Tensor, sub: Optional[torch.Tensor],
               refresh: Optional[torch.Tensor], pos_r: Optional[torch.Tensor], index: StepIndex,
               cache: KVCache) -> torch.Tensor:
        """One pre-norm block on gathered rows.

        x_r [R, D]  block input of the rows whose keys/values are refreshed (⊇ the queries;
                    R = B·L when ``refresh`` is None)
        x_q [T, D]  block input of the query rows (``sub`` indexes them in x_r; None: x_q = x_r)
        → the block output of the query rows [T, D]
        """
        attn = block.attn
        B, L = self.B, self.L
        D = x_r.shape[-1]
        H, hd = attn.n_heads, attn.head_dim
        y_r = block.norm1(x_r)
        kv_r = attn.kv(y_r)
        rope = self.ctx.rope
        if rope is not None:
            cos, sin = rope
            if pos_r is not None:
                cos, sin = cos.index_select(0, pos_r), sin.index_select(0, pos_r)
            else:
                cos, sin = cos.repeat(B, 1), sin.repeat(B, 1)
            k_r = _rotate(kv_r[:, :D].reshape(-1, H, hd), cos[:, None], sin[:, None])
            kv_r = torch.cat([k_r.reshape(-1, D), kv_r[:, D:]], dim=1)
        if refresh is None:
            cache.kv = kv_r
        elif self.inplace:
            cache.kv.index_copy_(0, refresh, kv_r)
        else:
            cache.kv = cache.kv.index_copy(0, refresh, kv_r)
        y_q = y_r if sub is None else y_r.index_select(0, sub)
        q = attn.q(y_q)
        if rope is not None:
            cos, sin = rope
            q = _rotate(q.view(-1, H, hd), cos.index_select(0, index.pos)[:, None],
                        sin.index_select(0, index.pos)[:, None]).reshape(-1, D)
        kv = cache.kv.view(B, L, 2 * D)
        if index.live is not None:
            kv = kv.index_select(0, index.live)
        Bq = kv.shape[0]
        k = kv[..., :D].view(Bq, L, H, hd).transpose(1, 2)
        v = kv[..., D:].view(Bq, L, H, hd).transpose(1, 2)
        if index.dense:
            qg = q.view(B, L, H, hd).transpose(1, 2)
        else:
            grid = q.new_zeros(Bq * index.a_max, D)
            grid = grid.index_copy_(0, index.slot, q) if self.inplace else grid.index_copy(0, index.slot, q)
            qg = grid.view(Bq, index.a_max, H, hd).transpose(1, 2)
        p = attn.dropout if attn.training else 0.0
        y = F.scaled_dot_product_attention(qg, k, v, attn_mask=index.qmask, dropout_p=p)
        y = y.transpose(1, 2).reshape(-1, D)
        if not index.dense:
            y = y.index_select(0, index.slot)
        x_q = x_q + block.drop(attn.o(y))
        return x_q + block.mlp(block.norm2(x_q))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [R, H, hd] rotated by per-row angles cos/sin [R, 1, hd/2] (as ``layers.apply_rotary``)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def run_compact(engine: "Engine", *, h0: torch.Tensor, mask: torch.Tensor, ctx: AttnContext,
                readout: Callable[[torch.Tensor], torch.Tensor], training: bool) -> "EngineResult":
    """:meth:`Engine.run` with compacted steps: same arguments, same result (to round-off).

    The loop is the dense one; only the step differs, and without autograd the bookkeeping
    skips the full-tensor copies the dense loop needs to keep the graph (the exit state of a
    token is its frozen state, so it is read from the last state at the end).
    """
    from ponder.models.engine import EngineResult

    N = engine.max_steps
    policy = engine.policy
    stepper = CompactStepper(core=engine.core, step_embedding=engine.step_embedding, ctx=ctx,
                             mask=mask, max_steps=N)
    grad = torch.is_grad_enabled()
    active = mask.clone()
    # pads never run and never pass gradient anywhere
    h = torch.where(mask[..., None], h0, h0.detach()) if grad else h0
    exit_state = h
    steps = torch.zeros_like(mask, dtype=torch.long)
    want_logits = policy.needs_step_logits(training)
    step_logits: list[torch.Tensor] = []
    memo = policy.start(View(n=0, max_steps=N, h=h, prev=None, active=active, mask=mask,
                             training=training, readout=readout))
    view = None
    for n in range(1, N + 1):
        new = stepper.step(n, h, active)
        view = View(n=n, max_steps=N, h=new, prev=h, active=active, mask=mask,
                    training=training, readout=readout)
        decision = policy.step(memo, view)
        if want_logits:
            step_logits.append(view.logits())
        halt = active if n == N else decision.halt.bool() & active
        steps = steps + active.long()
        still = active & ~halt
        if grad or decision.state is not None or decision.exit_state is not None:
            state = decision.state if decision.state is not None else new
            frozen_at = decision.exit_state if decision.exit_state is not None else state
            if grad:
                exit_state = torch.where(halt[..., None], frozen_at, exit_state)
            frozen = torch.where(halt[..., None], frozen_at, h)
            h = torch.where(still[..., None], state, frozen.detach() if grad else frozen)
        else:
            # no override: still-active rows carry the step output, newly halted rows freeze
            # at it, and the others did not change — the step output is the next state
            h = new
        active = still
    if not grad:
        exit_state = h  # every token is frozen at its exit state after step N
    halting = policy.finish(memo, view)
    logits = torch.stack(step_logits, 2) if want_logits else None
    return EngineResult(exit=exit_state, steps=steps, step_logits=logits, halting=halting)
