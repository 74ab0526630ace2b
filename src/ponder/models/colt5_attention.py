"""CoLT5's conditional attention (Ainslie et al. 2023, arXiv:2303.09752), the attention kind
``colt5`` (``model.attention.kind: colt5``): light local attention for every token plus heavy
attention among the routed tokens of each sequence,

    a_i = Light_i + [i ∈ Q] · s̃_q(i) · Heavy_i

- Light: ``light_heads`` heads of ``light_head_dim``; query i attends to the visible keys j
  with ``|i − j| ≤ window`` (itself always), softmax over them.
- Routing: two linear scores per token, ``(s_q, s_kv) = W_r y + b``. Per sequence the
  candidates are the tokens the block's attention sees as keys (the real ones; the routed
  subset under a ``keys="routed"`` router or a policy whose keys are the active tokens).
  Q = the ``k = ⌈capacity·n⌉`` candidates of highest s_q, K = those of highest s_kv
  (:func:`ponder.models.colt5.soft_route`, the FFN kind's soft top-k by coordinate descent).
- Heavy: ``heavy_heads`` heads of the model's head dim; a query in Q attends to the keys in
  K only, its values scaled by their own soft score s̃_kv (the public code's improvisation;
  without it the key router would get no gradient), the output scaled by s̃_q. With
  ``straight_through`` (default) both scales are 1 forward and ∂s̃ backward.
- Output: one linear map of the concatenated light and heavy heads (= the sum of two
  output projections).

How it fits the row-level contract (:class:`ponder.models.layers.AttentionKind`): its weights
are not one softmax (``weights = "colt5"``), so every execution mode hands every query at its
own position to :meth:`attend_grid`. The D = d_model channels of each row are packed:

    queries      [light q | heavy q | 0 …]                (rotated per head)
    keys         [light k | heavy k | s_q | s_kv | 0 …]    (rotated per head; scores not)
    values       [light v | heavy v | 0 …]
    attend_grid  [light a | heavy a | 0 … | attention FLOPs of this query]

The router scores ride in the key half, so both are computed from the token's key/value
input (the block input, or a policy's memory when it feeds the keys) and the compacted
stepper's key/value cache ``[2, B, H, L, hd]`` carries them with the keys of frozen tokens:
no new slot, and the queries route among every candidate (frozen ones too, whose heavy
output nobody keeps), so dense and compacted execution pick the same tokens. Which keys are
visible (pads are not) is read off the ``allowed`` mask. The last output channel carries the
query's attention FLOPs to :meth:`out_rows`, which charges them through
``ctx.count_row_flops`` (only rows that really enter the block count): light attention over
the visible keys in its window, heavy attention over the |K| routed keys for the queries in
Q only. The CPU implementation computes the heavy scores on the whole ``[L, L]`` grid and
masks (sequences are short here); the FLOPs counted are the rule's.

Top-k over the sequence reads every position: not causal (a causal model refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.models.colt5 import SoftRouteKnobs, soft_route
from ponder.models.kinds import ATTENTIONS
from ponder.models.layers import AttentionKind, AttnContext, apply_rotary
from ponder.tasks.base import knob


@dataclass(frozen=True)
class CoLT5AttentionKnobs(SoftRouteKnobs):
    window: int = knob(4, lo=0, hi=1_000_000, help="light attention: keys within this distance of the query")
    light_heads: int = knob(1, lo=1, hi=256, help="heads of the light (local) branch")
    light_head_dim: int = knob(0, lo=0, hi=4096, help="their head dim, even (0: half the model's)")
    heavy_heads: int = knob(0, lo=0, hi=256,
                            help="heads of the heavy (routed) branch, of the model's head dim (0: as many as fit)")


def visible_keys(allowed: Optional[torch.Tensor], B: int, L: int, device: torch.device) -> torch.Tensor:
    """allowed [B, 1, L, L] bool | None → [B, L] bool, the keys some other query may see.

    Non-causal masks only: a visible key's column is all True (every query sees it), a hidden
    one's holds the diagonal alone (each token always sees itself). With L = 1 the one token
    counts as visible."""
    if allowed is None or L == 1:
        return torch.ones(B, L, dtype=torch.bool, device=device)
    return allowed[:, 0].sum(1) > 1


@ATTENTIONS.register
class CoLT5Attention(AttentionKind):
    """Light local attention for every token + heavy attention among the routed queries and
    keys of each sequence (``colt5``; see the module docstring for the rule and the layout)."""

    name = "colt5"
    causal = False
    paper = "Ainslie et al. 2023, CoLT5 (arXiv:2303.09752), conditional attention"
    Knobs = CoLT5AttentionKnobs
    weights = "colt5"

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        kn: CoLT5AttentionKnobs = knobs or CoLT5AttentionKnobs()
        self.knobs = kn
        self.n_heads, self.head_dim, self.dropout = n_heads, d_model // n_heads, dropout
        hd = self.head_dim
        self.light_dim = kn.light_head_dim or hd // 2
        if self.light_dim % 2 or self.light_dim > hd:
            raise ConfigError(f"attention kind 'colt5': light_head_dim {self.light_dim} must be even "
                              f"and at most the model's head dim {hd}")
        self.Hl, self.Dl = kn.light_heads, kn.light_heads * self.light_dim
        # the key row holds both branches' keys and the two router scores
        self.Hh = kn.heavy_heads or (d_model - self.Dl - 2) // hd
        self.Dh = self.Hh * hd
        if self.Hh < 1 or self.Dl + self.Dh + 2 > d_model:
            raise ConfigError(f"attention kind 'colt5': {self.Hl}×{self.light_dim} light + "
                              f"{max(self.Hh, 1)}×{hd} heavy channels + 2 router scores do not fit "
                              f"d_model {d_model}")
        inner = self.Dl + self.Dh
        self.q = nn.Linear(d_model, inner)
        self.kv = nn.Linear(d_model, 2 * inner)
        self.route = nn.Linear(d_model, 2)        # (s_q, s_kv)
        self.o = nn.Linear(inner, d_model)
        self.d_model = d_model

    # -- the row-level pieces -----------------------------------------------------------
    def _rotate(self, t: torch.Tensor, rope) -> torch.Tensor:
        """t [R, Dl + Dh] (light heads, then heavy heads) rotated per head by the model's
        rotary tables (a head of dim d takes the first d/2 frequencies)."""
        if rope is None:
            return t
        cos, sin = rope
        parts = []
        for (lo, n, d) in ((0, self.Hl, self.light_dim), (self.Dl, self.Hh, self.head_dim)):
            x = t[:, lo:lo + n * d].reshape(-1, n, d)
            parts.append(apply_rotary(x, cos[:, None, :d // 2], sin[:, None, :d // 2]).reshape(-1, n * d))
        return torch.cat(parts, dim=1)

    def _pad(self, t: torch.Tensor) -> torch.Tensor:
        """t [R, c] → [R, D]: zeros in the unused channels."""
        return F.pad(t, (0, self.d_model - t.shape[1]))

    def queries(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """y [R, D] → [R, H, hd]: [light q | heavy q | 0 …]."""
        return self._pad(self._rotate(self.q(y), rope)).view(-1, self.n_heads, self.head_dim)

    def keys_values(self, y: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]],
                    x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y [R, D] → [R, 2·D]: keys [light k | heavy k | s_q | s_kv | 0 …], values
        [light v | heavy v | 0 …]."""
        inner = self.Dl + self.Dh
        kv = self.kv(y)
        k = torch.cat([self._rotate(kv[:, :inner], rope), self.route(y)], dim=1)
        return torch.cat([self._pad(k), self._pad(kv[:, inner:])], dim=1)

    def attend_grid(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    allowed: Optional[torch.Tensor], p: float) -> torch.Tensor:
        """q, k, v [B, H, L, hd] (packed rows, every position; rows nobody reads may hold any
        finite values), allowed [B, 1, L, L] bool | None (non-causal) → [B, H, L, hd]:
        [light a | heavy a | 0 … | attention FLOPs]. No parameters are read."""
        B, H, L, hd = k.shape
        D = H * hd
        qf, kf, vf = (t.transpose(1, 2).reshape(B, L, D) for t in (q, k, v))
        Dl, Dh, kn = self.Dl, self.Dh, self.knobs
        visible = visible_keys(allowed, B, L, k.device)
        seen = (torch.ones(B, L, L, dtype=torch.bool, device=k.device) if allowed is None
                else allowed[:, 0])
        pos = torch.arange(L, device=k.device)
        window = (pos[:, None] - pos[None, :]).abs() <= kn.window
        light_mask = seen & window                                   # [B, L, L]

        def heads(t: torch.Tensor, lo: int, n: int, d: int) -> torch.Tensor:
            return t[..., lo:lo + n * d].reshape(B, L, n, d).transpose(1, 2)   # [B, n, L, d]

        def attend(qh, kh, vh, mask):
            w = (torch.matmul(qh, kh.transpose(-1, -2)) * qh.shape[-1] ** -0.5)
            w = w.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
            if p > 0.0:
                w = F.dropout(w, p)
            return torch.matmul(w, vh).transpose(1, 2).reshape(B, L, -1)

        d_l = self.light_dim
        light = attend(heads(qf, 0, self.Hl, d_l), heads(kf, 0, self.Hl, d_l),
                       heads(vf, 0, self.Hl, d_l), light_mask)
        # routing: both scores from the key rows, the candidates are the visible keys
        s_q, s_kv = kf[..., Dl + Dh], kf[..., Dl + Dh + 1]
        route_q, mult_q = soft_route(s_q, visible, kn)
        route_k, mult_k = soft_route(s_kv, visible, kn)
        n_k = route_k.sum(1)                                         # [B]
        # a sequence without a routed key has no routed query either: let its (discarded)
        # rows see every key so that no softmax row is empty
        heavy_mask = (route_k | (n_k == 0)[:, None])[:, None, :].expand(B, L, L)
        hd_h = self.head_dim
        v_h = heads(vf, Dl, self.Hh, hd_h) * mult_k[:, None, :, None]
        heavy = attend(heads(qf, Dl, self.Hh, hd_h), heads(kf, Dl, self.Hh, hd_h), v_h, heavy_mask)
        heavy = heavy * (route_q.to(heavy.dtype) * mult_q)[..., None]
        flops = (4.0 * Dl * light_mask.sum(-1) + 4.0 * Dh * route_q * n_k[:, None]).to(k.dtype)
        a = torch.cat([light, heavy, k.new_zeros(B, L, D - Dl - Dh - 1), flops[..., None]], dim=-1)
        return a.view(B, L, H, hd).transpose(1, 2)

    def out_rows(self, a: torch.Tensor, y: Optional[torch.Tensor], ctx: AttnContext,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a [R, D] from :meth:`attend_grid` → [R, D]; charges each row's attention FLOPs."""
        ctx.count_row_flops(rows, a[:, -1])
        return self.out(a)

    def out(self, a: torch.Tensor) -> torch.Tensor:
        return self.o(a[:, :self.Dl + self.Dh])

    def flops_per_token(self, n_keys: torch.Tensor | float) -> torch.Tensor | float:
        """The projections (queries, keys, values, router scores, output) per entering row; the
        attention itself depends on the window and the routing and is counted per row in
        :meth:`out_rows`. The soft top-k's iterations are not counted (as the FFN kind's)."""
        inner = self.Dl + self.Dh
        return 8.0 * self.d_model * inner + 4.0 * self.d_model
