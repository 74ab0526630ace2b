"""Transformer building blocks, written once: norms, positions, the pre-norm block, readout.

This file plus :mod:`ponder.models.engine` is the plain-PyTorch reference of every model:
read top to bottom, it is the whole computation. Faster execution (the compacted stepper,
the compiled kernels) builds from the same modules through their row-level pieces:

- an **attention kind** gives ``queries`` / ``keys_values`` / ``out`` of chosen rows
  (:class:`AttentionKind`); how queries meet keys is chosen by ONE dispatcher outside it
  (:mod:`ponder.models.dispatch`: SDPA, padded groups, the compiled unpadded kernel);
- an **FFN kind** maps rows to rows (:class:`FFN`);
- a **block router** picks which tokens enter a block (:class:`Router`);
- a :class:`Block` is ``kv_rows`` → (attention) → ``finish``; its ``forward`` is the
  reference on ``[B, L, D]``.

Kinds live in registries (:mod:`ponder.models.kinds`); today's attention is ``standard``
and today's MLP is ``dense``. Auxiliary losses, routing statistics and FLOPs per token travel
in the per-forward :class:`AttnContext`, never as module state.

Initialisation is PyTorch's default on purpose: N(0, 0.02) left ``list_rank`` stuck on a
saddle (reference/measured.md).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.models.kinds import ATTENTIONS, FFNS, ROUTERS, NoKnobs
from ponder.models.norm import rms_norm


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain; ``eps`` inside the root keeps ×1e3 inputs finite."""

    def __init__(self, *, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] → [..., D]."""
        return rms_norm(x, self.weight, self.eps)  # fused: saves x and the row scale only


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(d_model=d_model)
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    raise ConfigError(f"unknown norm {kind!r}; norms: rmsnorm, layernorm")


@dataclass
class AttnContext:
    """The per-forward context: what every block call of one forward pass shares.

    attn_mask  [B, 1, L, L] bool | None  True where query i may attend to key j (padding,
                                  causality; a token may always attend to itself so no row is
                                  empty); None: nothing to mask
    key_mask   [B, L] bool        True at real tokens
    causal     bool
    rope       (cos, sin) each [L, head_dim/2], or None without rotary positions
    aux        name → summed auxiliary loss (load balance, z-loss, ...) emitted by the kinds
               inside the blocks during this forward; ``model.loss`` adds them
    pooled     (name, module key) → (finish, summed statistics): a term computed once per
               forward from the statistics of every call of one module (SUT's MI loss,
               ``moe.py``'s ``acc_aux_loss``); :meth:`aux_terms` finishes them
    stats      name → list of floats (routing statistics), averaged into ``model.loss``'s stats
    flops      [B, L] float | None  forward FLOPs each token used so far (the engine and the
               model count them: blocks entered, keys attended, experts evaluated)
    tokens     [B, L] long | None   the input token ids (hash-routed experts read them)

    Aux terms and statistics live here, never as module state, so a module can be applied
    any number of times per forward (every step of a shared core) and in any execution mode.
    """

    attn_mask: Optional[torch.Tensor]
    key_mask: torch.Tensor
    causal: bool
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    aux: dict = field(default_factory=dict)
    pooled: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    flops: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    # which tokens are entering the block being run (set by whoever runs it); a dict so that
    # every copy of the context (``keys_of``, ``dataclasses.replace``) shares it
    entering: dict = field(default_factory=dict)

    @staticmethod
    def build(mask: torch.Tensor, *, causal: bool, rope: "Optional[Rotary]" = None) -> "AttnContext":
        """mask [B, L] bool → the context for one forward pass."""
        B, L = mask.shape
        allowed = mask[:, None, None, :].expand(B, 1, L, L)
        eye = torch.eye(L, dtype=torch.bool, device=mask.device)
        allowed = allowed | eye
        if causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
        tables = rope.tables(L, mask.device) if rope is not None else None
        return AttnContext(attn_mask=allowed, key_mask=mask, causal=causal, rope=tables)

    def add_aux(self, name: str, value: torch.Tensor) -> None:
        """Add a (weighted, scalar) auxiliary loss term; terms of one name are summed."""
        self.aux[name] = self.aux[name] + value if name in self.aux else value

    def add_pooled(self, name: str, key: Any, stats: dict, finish: Callable[[dict], torch.Tensor]) -> None:
        """Add one call's statistics (name → tensor, summed over the calls) to the pooled term
        ``name`` of the module ``key``; ``finish(summed stats)`` → the weighted scalar term,
        computed once per forward by :meth:`aux_terms` (a shared core applied N times pools
        its N calls' rows instead of adding N terms)."""
        entry = self.pooled.get((name, key))
        if entry is None:
            self.pooled[(name, key)] = (finish, dict(stats))
            return
        acc = entry[1]
        for k, v in stats.items():
            acc[k] = acc[k] + v

    def aux_terms(self) -> dict:
        """name → scalar: every auxiliary term of this forward (the summed per-call terms and
        the pooled ones finished; terms of one name from several modules are added)."""
        out = dict(self.aux)
        for (name, _), (finish, stats) in self.pooled.items():
            value = finish(stats)
            out[name] = out[name] + value if name in out else value
        return out

    def set_entering(self, enter: Optional[torch.Tensor]) -> None:
        """enter [B, L] bool: the tokens that run the next block call (None: every real token)."""
        self.entering["mask"] = None if enter is None else enter.reshape(-1)

    def row_weight(self, rows: Optional[torch.Tensor], n_rows: int, dtype: torch.dtype) -> torch.Tensor:
        """[R] 1.0 at the rows (flat token indices; None: all ``B·L`` in order) of tokens that
        really enter the block, 0.0 at the others (pads; frozen tokens that a dense pass
        computes anyway). An FFN kind's aux losses and statistics average with it, so they
        are the same in every execution mode."""
        enter = self.entering.get("mask")
        if enter is None:
            enter = self.key_mask.reshape(-1)
        w = enter if rows is None else enter.index_select(0, rows)
        if w.numel() != n_rows:  # a caller outside the engine (e.g. a segment of the rows)
            w = torch.ones(n_rows, dtype=torch.bool, device=enter.device)
        return w.to(dtype)

    def add_stat(self, name: str, value: float) -> None:
        self.stats.setdefault(name, []).append(float(value))

    def count_flops(self, tokens: torch.Tensor, per_token: torch.Tensor | float) -> None:
        """tokens [B, L] bool (or float weights): add ``per_token`` FLOPs ([B, L] or scalar)."""
        if self.flops is not None:
            self.flops += tokens.to(self.flops.dtype) * per_token

    def count_row_flops(self, rows: Optional[torch.Tensor], per_row: torch.Tensor) -> None:
        """Add FLOPs that depend on the row, from inside a kind's ``forward``: per_row [R] is
        what each row used beyond the kind's ``flops_per_token()`` (experts evaluated, leaves
        descended, width run). ``rows`` as in ``FFN.forward`` (None: all ``B·L`` in order).
        Only rows that really enter the block count (``row_weight``), so the total is the same
        in dense and compacted execution. Switched off during the model's per-step readouts
        (they run any number of times; the final readout counts once)."""
        if self.flops is None or not self.entering.get("count_row_flops", True):
            return
        flat = self.flops.view(-1)
        if rows is None:
            if per_row.numel() != flat.numel():
                raise ValueError(f"count_row_flops: {per_row.numel()} rows without indices "
                                 f"for {flat.numel()} tokens")
            rows = torch.arange(flat.numel(), device=flat.device)
        w = self.row_weight(rows, per_row.numel(), flat.dtype)
        flat.index_add_(0, rows, w * per_row.detach().to(flat.dtype))

    def count_block(self, block: "Block", enter: torch.Tensor,
                    keys: "Optional[AttnContext]" = None) -> None:
        """Count the FLOPs of the tokens ``enter [B, L]`` running ``block`` with the keys of
        ``keys`` (default: this context) visible: every real token of the sequence, or the
        ones up to the query's position when causal."""
        if self.flops is None:
            return
        km = (keys or self).key_mask
        n_keys = km.cumsum(1) if self.causal else km.sum(1, keepdim=True).expand_as(km)
        self.count_flops(enter, block.flops_per_token(n_keys.clamp(min=1).to(self.flops.dtype)))

    def keys_of(self, visible: torch.Tensor) -> "AttnContext":
        """The same context with only ``visible [B, L]`` tokens as keys (each token still sees
        itself); the accumulators are shared."""
        B, L = visible.shape
        keys = self.key_mask & visible
        mask = keys[:, None, None, :] | torch.eye(L, dtype=torch.bool, device=visible.device)
        if self.attn_mask is not None:
            mask = mask & self.attn_mask
        elif self.causal:  # pragma: no cover - a causal context always has its mask
            mask = mask & torch.ones(L, L, dtype=torch.bool, device=visible.device).tril()
        return dataclasses.replace(self, attn_mask=mask, key_mask=keys)

    def rope_rows(self, pos: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The rotary tables of rows at positions ``pos [R]`` (each [R, hd/2]), or None."""
        if self.rope is None:
            return None
        cos, sin = self.rope
        return cos.index_select(0, pos), sin.index_select(0, pos)

    def positions(self, n_rows: int) -> torch.Tensor:
        """Positions of the rows of a flat ``[B·L]`` view in natural order."""
        L = self.key_mask.shape[1]
        return torch.arange(n_rows, device=self.key_mask.device) % L


class Rotary(nn.Module):
    """Rotary position tables (no parameters): rotate pairs of (q, k) channels by position."""

    def __init__(self, *, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary positions need an even head dimension, got {head_dim}")
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def tables(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (cos, sin), each [length, head_dim/2]."""
        t = torch.arange(length, device=device, dtype=torch.float32)
        angles = torch.outer(t, self.inv_freq.to(device))
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., hd] rotated by cos/sin broadcastable to [..., hd/2] (pairs are (first half,
    second half)): x [B, H, L, hd] with tables [L, hd/2], or rows x [R, H, hd] with [R, 1, hd/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# -- what lives inside a block: the contracts of the three registries ----------------------
class AttentionKind(nn.Module):
    """Contract of an attention kind (registry ``ATTENTIONS``), at the level of rows.

    Every execution mode builds attention from these three projections; *how* queries meet
    keys (SDPA, padded groups, the compiled unpadded kernel) is chosen outside, by
    :mod:`ponder.models.dispatch` (this class's ``forward`` is the plain-PyTorch reference).

        queries(y [R, D], rope)      → [R, H, hd]   (rotated when ``rope`` rows are given)
        keys_values(y [R, D], rope)  → [R, 2·D]     keys' heads then values' heads, keys rotated
        out(a [R, D])                → [R, D]       a: the heads' attention outputs, concatenated
        flops_per_token(n_keys)      forward FLOPs of one query row attending to n_keys keys

    A kind whose output projection depends on the query token itself (SwitchHead's experts
    are picked from it) sets ``out_reads_input = True`` and overrides ``out_rows``.

    A kind whose weights are not a softmax of ``q·k/√hd`` (``weights != "softmax"``: NDR's
    geometric attention) brings its own rule::

        attend_grid(q [B, H, L, hd + e], k, v [B, H, L, hd], allowed [B, 1, L, L] | None, p)
                                     → [B, H, L, hd]

    with every query at its own position (e = ``extra_query_channels``, per-query extras such
    as direction biases that ``queries`` appends to each head); the dispatcher then never
    packs queries or uses the compiled kernels.

    Peri-layernorm (``BlockSpec.norm_layout="peri"``, MoEUT): ``keys_values(y, rope, x=x)``
    computes the keys (and any selection) from the normed rows y and the values from the
    raw rows x [R, D]; a kind that can do so sets ``peri = True``.
    """

    name: ClassVar[str] = ""
    causal: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    Knobs: ClassVar[type] = NoKnobs
    n_heads: int
    head_dim: int
    dropout: float
    out_reads_input: ClassVar[bool] = False
    weights: ClassVar[str] = "softmax"
    extra_query_channels: ClassVar[int] = 0
    peri: ClassVar[bool] = False

    def out_rows(self, a: torch.Tensor, y: Optional[torch.Tensor], ctx: AttnContext,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The output projection of query rows: a [R, D] attention output, y [R, D] the rows'
        normed block input (given when ``out_reads_input``), rows their flat indices (as an
        FFN's) → [R, D]. Default: ``out(a)``."""
        return self.out(a)

    def forward(self, y: torch.Tensor, ctx: AttnContext,
                y_kv: Optional[torch.Tensor] = None, x_v: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reference: y [B, L, D] (normed) → [B, L, D], every token a query; keys/values from
        ``y_kv`` [B, L, D] (normed) when given, else from y; the values from the raw ``x_v``
        [B, L, D] when given (peri-layernorm). Softmax attention, or the kind's
        ``attend_grid`` when its weights are not a softmax."""
        B, L, D = y.shape
        H, hd = self.n_heads, self.head_dim
        rows = y.reshape(B * L, D)
        rope = ctx.rope_rows(ctx.positions(B * L))
        q = self.queries(rows, rope).view(B, L, H, -1).transpose(1, 2)   # hd + extras
        kv_rows = rows if y_kv is None else y_kv.reshape(B * L, D)
        if x_v is None:
            kv = self.keys_values(kv_rows, rope)
        else:
            kv = self.keys_values(kv_rows, rope, x=x_v.reshape(B * L, D))
        kv = kv.view(B, L, 2, H, hd)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if self.weights == "softmax":
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attn_mask, dropout_p=p)
        else:  # the kind's own rule, every query at its own position
            a = self.attend_grid(q, k, v, ctx.attn_mask, p)
        return self.out_rows(a.transpose(1, 2).reshape(B * L, D), rows, ctx).view(B, L, D)


@ATTENTIONS.register
class Attention(AttentionKind):
    """Multi-head self-attention (``standard``): one query, key, value and output projection."""

    name = "standard"
    paper = "Vaswani et al. 2017, Attention Is All You Need"
    peri = True

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.o = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def queries(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        q = self.q(y).view(-1, self.n_heads, self.head_dim)
        return q if rope is None else apply_rotary(q, rope[0][:, None], rope[1][:, None])

    def keys_values(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]],
                    x: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x is None:
            kv = self.kv(y)
        else:
            # peri-layernorm: keys from the normed rows, values from the raw ones
            D = y.shape[-1]
            w, b = self.kv.weight, self.kv.bias
            kv = torch.cat([F.linear(y, w[:D], b[:D]), F.linear(x, w[D:], b[D:])], dim=-1)
        if rope is None:
            return kv
        D = kv.shape[-1] // 2
        k = apply_rotary(kv[:, :D].reshape(-1, self.n_heads, self.head_dim),
                         rope[0][:, None], rope[1][:, None])
        return torch.cat([k.reshape(-1, D), kv[:, D:]], dim=1)

    def out(self, a: torch.Tensor) -> torch.Tensor:
        return self.o(a)

    def flops_per_token(self, n_keys: torch.Tensor | float) -> torch.Tensor | float:
        D = self.n_heads * self.head_dim
        # Q, K, V, O projections (2 FLOPs per multiply-add) + scores and weighted sum
        return 8.0 * D * D + 4.0 * D * n_keys


class FFN(nn.Module):
    """Contract of an FFN kind (registry ``FFNS``): position-wise, on rows.

        forward(x [R, D] (normed), ctx, rows [R] long | None) → [R, D]
        flops_per_token()  forward FLOPs per row (counted for every token entering the
                           block; a kind whose cost depends on the row adds the rest from
                           ``forward`` with ``ctx.count_row_flops(rows, per_row)``)

    ``rows``: the rows' flat token indices ``b·L + l`` in the batch (None: all ``B·L`` tokens
    in natural order), for kinds that need to know which sequence a row belongs to. A kind
    with auxiliary losses adds them with ``ctx.add_aux`` (never as module state), averaged
    over the rows that really enter the block (``ctx.row_weight(rows, R, dtype)``: a dense
    pass also computes pads and frozen tokens, whose outputs are thrown away).

    Peri-layernorm (``BlockSpec.norm_layout="peri"``, MoEUT: no norm on what the FFN
    computes with, only on what feeds a selection): ``peri`` says how a kind runs there —
    ``"raw"``: it reads the raw residual rows (no selection: ``dense``); ``"select"``: it is
    called ``forward(x, ctx, rows, select=norm(x))``, its experts read the raw x and its
    router the normed rows; ``""``: not supported (the model refuses the layout).
    """

    name: ClassVar[str] = ""
    causal: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    Knobs: ClassVar[type] = NoKnobs
    peri: ClassVar[str] = ""


@FFNS.register
class MLP(FFN):
    """Position-wise feed-forward (``dense``): Linear → GELU → Linear."""

    name = "dense"
    paper = "Vaswani et al. 2017, Attention Is All You Need"
    peri = "raw"

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: Optional[AttnContext] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [..., D] → [..., D]."""
        return self.drop(self.down(F.gelu(self.up(x))))

    def flops_per_token(self) -> float:
        return 4.0 * self.up.in_features * self.up.out_features


@dataclass
class Route:
    """A router's decision for one block: which tokens enter it and with what weight.

    enter   [B, L] bool          tokens that run the block (a subset of the candidates)
    weight  [B, L] float | None  the entering tokens' update is scaled by it (the router on
                                 the gradient path: x + w·(block(x) − x)); None = 1
    """

    enter: torch.Tensor
    weight: Optional[torch.Tensor] = None


class Router(nn.Module):
    """Contract of a block router (registry ``ROUTERS``): per block, which tokens enter.

        forward(x [B, L, D] block input, candidates [B, L] bool, ctx) → :class:`Route`

    ``candidates``: the tokens still running (the policy's active ones). ``keys``: which
    tokens the block's attention sees as keys — ``"all"`` (every real token, the ones that do
    not enter at their current state: state copying) or ``"routed"`` (the entering tokens
    only, as in Mixture-of-Depths). The tokens that do not enter pass the block unchanged.
    """

    name: ClassVar[str] = ""
    causal: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    Knobs: ClassVar[type] = NoKnobs
    keys: ClassVar[str] = "all"

    def flops_per_token(self) -> float:
        """Forward FLOPs of scoring one candidate token (counted on every candidate)."""
        return 0.0


# -- the block --------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSpec:
    """How to build a block: sizes and the kinds (with validated knobs) inside it."""

    d_model: int
    n_heads: int
    d_ff: int
    norm: str = "rmsnorm"
    norm_layout: str = "pre"      # pre (every sub-layer reads norm(x)) | peri (MoEUT)
    dropout: float = 0.0
    ffn: str = "dense"
    ffn_knobs: Any = None
    attention: str = "standard"
    attention_knobs: Any = None
    router: str = "none"          # "none": every token enters
    router_knobs: Any = None
    residual: str = "add"         # add | copy_gate (NDR: see Block)

    def without_router(self) -> "BlockSpec":
        return dataclasses.replace(self, router="none", router_knobs=None)


RESIDUALS = ("add", "copy_gate")
# NDR's copy gate starts closed (copy by default): σ(−3) ≈ 0.05 of the update gets through
COPY_GATE_BIAS = -3.0


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm(x))``, then ``+ ffn(norm(·))``.

    With ``spec.residual == "copy_gate"`` (the Neural Data Router's copy gate, Csordás et
    al. 2022) the FFN's update has no residual; a gate per token and channel, computed from
    the attention-updated state, chooses between it and the block's input:

        u = x + attn(norm1(x));  n = norm2(u);  g = σ(W_g n + b_g)   (b_g = −3: copy)
        x' = g ⊙ ffn(n) + (1 − g) ⊙ x

    With ``spec.norm_layout="peri"`` (MoEUT's peri-layernorm, ``moeut.py``: the residual is
    never normalised; only what feeds a softmax / sigmoid is): queries, keys and the
    attention's selections read norm1(x), the values the raw x; the FFN's router reads
    norm2(x), its experts (or a dense FFN itself) the raw x. The readout's final norm
    normalises the output before the head, as MoEUT's ``out_norm``.

    The row-level pieces (what the dense reference, the compacted stepper and AdaTape's encoder
    all build from; rows are flat ``[R, D]`` buffers of any chosen tokens):

        y, kv = block.kv_rows(x, rope)     y = norm1(x) [R, D], kv [R, 2·D] (keys rotated)
        q     = block.q_rows(y, rope)      [R, H, hd]
        x'    = block.finish(x, a, ctx, rows)   x + attn.out(a), then + ffn(norm2(·)) [R, D]

    ``block(h, ctx)`` is the plain-PyTorch reference on ``[B, L, D]`` (every token a query).
    """

    def __init__(self, *, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.norm1 = make_norm(spec.norm, spec.d_model)
        self.attn = ATTENTIONS.cls(spec.attention)(d_model=spec.d_model, n_heads=spec.n_heads,
                                                   dropout=spec.dropout, knobs=spec.attention_knobs)
        self.norm2 = make_norm(spec.norm, spec.d_model)
        self.ffn = FFNS.cls(spec.ffn)(d_model=spec.d_model, d_ff=spec.d_ff, dropout=spec.dropout,
                                      knobs=spec.ffn_knobs)
        self.router: Optional[Router] = (None if spec.router == "none" else
                                         ROUTERS.cls(spec.router)(d_model=spec.d_model,
                                                                  knobs=spec.router_knobs))
        self.drop = nn.Dropout(spec.dropout)
        if spec.residual not in RESIDUALS:
            raise ConfigError(f"unknown residual {spec.residual!r}; residuals: {', '.join(RESIDUALS)}")
        self.gate: Optional[nn.Linear] = None
        if spec.residual == "copy_gate":
            self.gate = nn.Linear(spec.d_model, spec.d_model)
            nn.init.constant_(self.gate.bias, COPY_GATE_BIAS)
        if spec.norm_layout not in ("pre", "peri"):
            raise ConfigError(f"unknown norm_layout {spec.norm_layout!r}; layouts: pre, peri")
        self.peri = spec.norm_layout == "peri"
        if self.peri and not self.attn.peri:
            raise ConfigError(f"norm_layout peri: attention kind {spec.attention!r} cannot read its "
                              f"values from the raw residual; peri-capable kinds: "
                              f"{', '.join(n for n in ATTENTIONS.names() if ATTENTIONS.cls(n).peri)}")
        if self.peri and not self.ffn.peri:
            raise ConfigError(f"norm_layout peri: ffn kind {spec.ffn!r} cannot run on the raw residual; "
                              f"peri-capable kinds: "
                              f"{', '.join(n for n in FFNS.names() if FFNS.cls(n).peri)}")
        if self.peri and self.gate is not None:
            raise ConfigError("norm_layout peri and residual copy_gate do not combine (not built)")

    # -- the row-level pieces -------------------------------------------------------------
    def kv_rows(self, x: torch.Tensor, rope,
                source: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [R, D] block input → (norm1(x) [R, D], keys/values [R, 2·D]); the keys/values
        come from ``source`` [R, D] instead of x when given (SUT's stick-breaking: the
        soft-halted mix is what the others attend to)."""
        y = self.norm1(x)
        src = x if source is None else source
        y_src = y if source is None else self.norm1(source)
        if self.peri:
            return y, self.attn.keys_values(y_src, rope, x=src)
        return y, self.attn.keys_values(y_src, rope)

    def q_rows(self, y: torch.Tensor, rope) -> torch.Tensor:
        """y [R, D] (normed) → queries [R, H, hd]."""
        return self.attn.queries(y, rope)

    def finish(self, x: torch.Tensor, a: torch.Tensor, ctx: AttnContext,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] block input, a [R, D] attention output (before the output projection)
        → block output [R, D]."""
        y = self.norm1(x) if self.attn.out_reads_input else None
        return self.update(x, x + self.drop(self.attn.out_rows(a, y, ctx, rows)), ctx, rows)

    def update(self, x: torch.Tensor, u: torch.Tensor, ctx: AttnContext,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] block input, u [R, D] after the attention residual → block output [R, D]:
        ``u + ffn(norm2(u))``, or with the copy gate ``g ⊙ ffn(n) + (1 − g) ⊙ x``."""
        if self.gate is None:
            return self.ffn_residual(u, ctx, rows)
        n = self.norm2(u)
        g = torch.sigmoid(self.gate(n))
        return torch.lerp(x, self.ffn(n, ctx, rows), g)

    def ffn_residual(self, x: torch.Tensor, ctx: AttnContext,
                     rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] → x + ffn(norm2(x)) (peri: see the class docstring)."""
        if not self.peri:
            return x + self.ffn(self.norm2(x), ctx, rows)
        if self.ffn.peri == "select":
            return x + self.ffn(x, ctx, rows, select=self.norm2(x))
        return x + self.ffn(x, ctx, rows)

    # -- the reference ------------------------------------------------------------------
    def forward(self, h: torch.Tensor, ctx: AttnContext,
                source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [B, L, D] → [B, L, D]; keys/values from ``source`` [B, L, D] when given."""
        B, L, D = h.shape
        y = self.norm1(h)
        y_kv = None if source is None else self.norm1(source)
        x_v = (h if source is None else source) if self.peri else None
        u = h + self.drop(self.attn(y, ctx, y_kv, x_v))
        return self.update(h.reshape(B * L, D), u.reshape(B * L, D), ctx).view(B, L, D)

    def flops_per_token(self, n_keys: torch.Tensor | float) -> torch.Tensor | float:
        """Forward FLOPs of one token entering this block with ``n_keys`` keys visible (the
        block's router, which scores every candidate, is counted on them by whoever runs it)."""
        gate = 0.0 if self.gate is None else 2.0 * self.gate.in_features * self.gate.out_features
        return self.attn.flops_per_token(n_keys) + self.ffn.flops_per_token() + gate


class Group(nn.Module):
    """G blocks applied in order (one recurrent step of the core, or one layer of a stack)."""

    def __init__(self, *, n_blocks: int, spec: BlockSpec) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(spec=spec) for _ in range(n_blocks))

    def forward(self, h: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """h [B, L, D] → [B, L, D] (every token through every block: the reference)."""
        for block in self.blocks:
            h = block(h, ctx)
        return h

    def flops_per_token(self, n_keys: torch.Tensor | float) -> torch.Tensor | float:
        return sum((b.flops_per_token(n_keys) for b in self.blocks), 0.0)


_PART = re.compile(r"[A-Za-z0-9_]+")


def token_parts(tokens: list[str]) -> tuple[list[str], torch.Tensor]:
    """Split compound tokens into slotted parts: ``"8>13"`` → ``0:8``, ``1:13``.

    A token with two or more alphanumeric runs is compound; part ``k`` of it is named
    ``"k:<run>"`` (the slot keeps ``8>13`` and ``13>8`` apart). Returns the sorted part names
    and ``table [V, S]`` long: 1 + the index of token v's part in slot s, 0 where none
    (atomic tokens such as ``"5"`` or ``"<pad>"`` have no parts).
    """
    split = [_PART.findall(t) for t in tokens]
    split = [runs if len(runs) >= 2 else [] for runs in split]
    names = sorted({f"{k}:{r}" for runs in split for k, r in enumerate(runs)})
    index = {name: i + 1 for i, name in enumerate(names)}
    slots = max((len(runs) for runs in split), default=0)
    table = torch.zeros(len(tokens), max(1, slots), dtype=torch.long)
    for v, runs in enumerate(split):
        for k, r in enumerate(runs):
            table[v, k] = index[f"{k}:{r}"]
    return names, table


class Embedding(nn.Module):
    """Token embedding (plus, optionally, its parts' embeddings) plus learned absolute
    positions (``positions="learned"``) or nothing.

    Part embeddings (:meth:`attach_parts`, ``ModelConfig.token_parts``): a compound token
    such as list_rank's edge ``8>13`` is embedded as ``tok[8>13] + part[0:8] + part[1:13]``,
    so every edge leaving node 8 shares one learned vector for "source 8". With opaque ids
    alone each of the ~270 edge tokens must learn its source and target codes on its own,
    and list_rank stalled at ~0.57 valid accuracy (reference model and ponder's alike).
    """

    def __init__(self, *, vocab_size: int, d_model: int, positions: str, max_len: int) -> None:
        super().__init__()
        if positions not in ("learned", "rotary", "none"):
            raise ConfigError(f"unknown positions {positions!r}; positions: learned, rotary, none")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.max_len = max_len
        self.part: Optional[nn.Embedding] = None

    def attach_parts(self, tokens: list[str]) -> None:
        """Add part embeddings for the vocabulary ``tokens`` (id order); call before training."""
        if len(tokens) != self.tok.num_embeddings:
            raise ConfigError(f"token_parts: {len(tokens)} token strings for a vocabulary of "
                              f"{self.tok.num_embeddings}")
        names, table = token_parts(tokens)
        # row 0 is "no part": zero and never updated (padding_idx)
        self.part = nn.Embedding(len(names) + 1, self.tok.embedding_dim, padding_idx=0)
        self.register_buffer("part_table", table)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] long → [B, L, D]."""
        x = self.tok(tokens)
        if self.part is not None:
            x = x + self.part(self.part_table[tokens]).sum(-2)
        if self.pos is not None:
            L = tokens.shape[1]
            if L > self.max_len:
                raise ConfigError(f"sequence length {L} exceeds max_len {self.max_len}")
            x = x + self.pos(torch.arange(L, device=tokens.device))[None]
        return x


class Readout(nn.Module):
    """Coda (C blocks) → norm → linear head: the one readout used after any step."""

    def __init__(self, *, coda: nn.Module, d_model: int, vocab_size: int, norm: str) -> None:
        super().__init__()
        self.coda = coda
        self.norm = make_norm(norm, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, h: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """h [B, L, D] → logits [B, L, V]."""
        return self.head(self.norm(self.coda(h, ctx)))

