"""Structured dense replacements at matched parameters: ``lowrank``, ``monarch``, ``btt``.

After Qiu et al. 2024, *Compute Better Spent: Replacing Dense Layers with Structured
Matrices* (arXiv:2406.06248): the FFN's two dense matrices become structured ones, and the
hidden width h grows until the FFN has as many parameters as the dense FFN of width d_ff
(``2·D·d_ff + d_ff + D``). Every structured matmul here costs two FLOPs per weight, so
equal parameters also means equal FLOPs per token: the comparison is wider-and-structured
against narrower-and-dense at the same budget.

A structured linear map ``n → m`` (no bias; the FFN adds its biases):

- **low rank** (rank r): ``W = U V``, U [m, r], V [r, n]; r·(n + m) weights.
- **block tensor-train** (BTT, rank r) with ``n = n1·n2``, ``m = m1·m2``::

      W[(i, c), (j, k)] = Σ_a  L[i, c, j, a] · R[j, i, a, k]      i < m1, c < m2, j < n1, k < n2

  i.e. first a block-diagonal map over input blocks j (each n2 → m1·r), then, after a
  transposition, a block-diagonal map over output blocks i (each n1·r → m2).
  r·(n·m1 + m·n1) weights.
- **Monarch** (b blocks; Dao et al. 2022) is BTT with rank 1 and ``n1 = m1 = b``: the
  product of two block-diagonal matrices with b blocks each and a permutation between them;
  b·(n + m) weights.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.models.kinds import FFNS
from ponder.models.layers import FFN, AttnContext
from ponder.tasks.base import knob


class LowRankLinear(nn.Module):
    """x [R, n] → x Vᵀ Uᵀ [R, m]; U [m, r], V [r, n]."""

    def __init__(self, *, n: int, m: int, rank: int) -> None:
        super().__init__()
        self.n, self.m, self.rank = n, m, rank
        # V ~ U(±1/√n), U ~ U(±√(3/r)): each entry of U V (a sum of r products) has
        # nn.Linear's variance 1 / (3n)
        self.V = nn.Parameter(torch.empty(rank, n).uniform_(-1.0, 1.0) / math.sqrt(n))
        self.U = nn.Parameter(torch.empty(m, rank).uniform_(-1.0, 1.0) * math.sqrt(3.0 / rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V), self.U)

    def n_weights(self) -> int:
        return self.rank * (self.n + self.m)


class BTTLinear(nn.Module):
    """Block tensor-train map x [R, n] → [R, m] (module docstring); cores
    ``R [n1, m1·r, n2]`` and ``L [m1, m2, n1·r]`` (stored so that each block's matmul reads a
    contiguous matrix)."""

    def __init__(self, *, n: int, m: int, rank: int, n1: int, m1: int) -> None:
        super().__init__()
        if n % n1 or m % m1:
            raise ConfigError(f"BTT factors {n1}, {m1} do not divide {n}, {m}")
        self.n, self.m, self.rank = n, m, rank
        self.n1, self.n2, self.m1, self.m2 = n1, n // n1, m1, m // m1
        # R ~ U(±1/√n), L ~ U(±√(3/r)): each entry of W (a sum of r products) has
        # nn.Linear's variance 1 / (3n)
        b_r, b_l = 1.0 / math.sqrt(n), math.sqrt(3.0 / rank)
        self.R = nn.Parameter(torch.empty(n1, m1 * rank, self.n2).uniform_(-b_r, b_r))
        self.L = nn.Parameter(torch.empty(m1, self.m2, n1 * rank).uniform_(-b_l, b_l))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        R = x.shape[0]
        n1, m1, r = self.n1, self.m1, self.rank
        xb = x.reshape(R, n1, self.n2).transpose(0, 1)                     # [n1, R, n2]
        y = torch.bmm(xb, self.R.transpose(1, 2))                           # [n1, R, m1·r]
        y = y.view(n1, R, m1, r).permute(2, 1, 0, 3).reshape(m1, R, n1 * r)  # [m1, R, n1·r]
        z = torch.bmm(y, self.L.transpose(1, 2))                            # [m1, R, m2]
        return z.transpose(0, 1).reshape(R, self.m)

    def n_weights(self) -> int:
        return self.R.numel() + self.L.numel()

    def core_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L [m1, m2, n1, r], R [n1, m1, r, n2]): the cores as in the module docstring."""
        return (self.L.view(self.m1, self.m2, self.n1, self.rank),
                self.R.view(self.n1, self.m1, self.rank, self.n2))


def squarest_factor(n: int) -> int:
    """The divisor of n nearest √n from below (n = f · n/f with f ≤ n/f)."""
    f = int(math.isqrt(n))
    while n % f:
        f -= 1
    return f


def dense_params(d_model: int, d_ff: int) -> int:
    """Parameters of the dense FFN these kinds match: up and down weights and biases."""
    return 2 * d_model * d_ff + d_ff + d_model


def matched_width(count: Callable[[int], Optional[int]], target: int, d_ff: int) -> int:
    """The hidden width h ∈ [1, 16·d_ff] whose parameter count ``count(h)`` (None: h not
    allowed) is nearest ``target`` (the smaller h on a tie); 0 if no h is allowed.

    A full scan: BTT's count is not monotone in h (its factors change with h)."""
    best, best_gap = 0, None
    for h in range(1, 16 * d_ff + 1):
        c = count(h)
        if c is not None and (best_gap is None or abs(c - target) < best_gap):
            best, best_gap = h, abs(c - target)
    return best


@functools.lru_cache(maxsize=None)
def solve_width(kind: type, d_model: int, d_ff: int, knobs: Any) -> tuple[int, int]:
    """(hidden width, parameter count) of structured FFN ``kind`` matched to the dense FFN
    (cached: every block of a model solves the same problem)."""
    def count(h: int) -> Optional[int]:
        w = kind.weights(d_model, h, knobs)
        return None if w is None else w + h + d_model

    h = matched_width(count, dense_params(d_model, d_ff), d_ff)
    if not h:
        raise ConfigError(f"ffn kind {kind.name!r}: no hidden width fits knobs {knobs}")
    return h, count(h)


class StructuredFFN(FFN):
    """down(gelu(up(x) + a)) + e with structured ``up: D → h`` and ``down: h → D``; h is
    solved so that the parameter count matches the dense FFN of width d_ff.

    forward(x [R, D], ctx, rows) → [R, D]
    """

    # within this relative gap of the dense FFN's parameters, or the kind refuses the knobs
    MATCH_TOLERANCE = 0.1

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        knobs = knobs or self.Knobs()
        self.check(d_model, knobs)
        target = dense_params(d_model, d_ff)
        self.width, got = solve_width(type(self), d_model, d_ff, knobs)
        if abs(got - target) > self.MATCH_TOLERANCE * target:
            raise ConfigError(f"ffn kind {self.name!r}: knobs {knobs} cannot match the dense FFN's "
                              f"{target} parameters (nearest: {got}); use a smaller structure knob")
        self.up = self.linear(d_model, self.width, d_model, knobs)
        self.down = self.linear(self.width, d_model, d_model, knobs)
        bound = 1.0 / math.sqrt(d_model)
        self.up_b = nn.Parameter(torch.empty(self.width).uniform_(-bound, bound))
        self.down_b = nn.Parameter(torch.empty(d_model).uniform_(-1.0 / math.sqrt(self.width),
                                                                 1.0 / math.sqrt(self.width)))
        self.drop = nn.Dropout(dropout)

    # what a structured kind defines
    @classmethod
    def check(cls, d_model: int, knobs: Any) -> None:
        """Refuse knobs that cannot structure a D-wide input (ConfigError)."""

    @classmethod
    def weights(cls, d_model: int, h: int, knobs: Any) -> Optional[int]:
        """Weights of up + down at hidden width h (None: h not allowed)."""
        raise NotImplementedError

    @classmethod
    def linear(cls, n: int, m: int, d_model: int, knobs: Any) -> nn.Module:
        """The structured map n → m of a block of width d_model (one of n, m)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, ctx: Optional[AttnContext] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] (normed) → [R, D]."""
        return self.drop(self.down(F.gelu(self.up(x) + self.up_b)) + self.down_b)

    def flops_per_token(self) -> float:
        return 2.0 * (self.up.n_weights() + self.down.n_weights())


@dataclass(frozen=True)
class LowRankKnobs:
    rank: int = knob(0, lo=0, hi=1 << 16, help="rank of each weight matrix (0: d_model / 4)")


@FFNS.register
class LowRankFFN(StructuredFFN):
    """Low-rank FFN (``lowrank``): each matrix U V of rank r, width matched to the dense FFN's
    parameters."""

    name = "lowrank"
    paper = "Qiu et al. 2024, Compute Better Spent: Replacing Dense Layers with Structured Matrices"
    Knobs = LowRankKnobs

    @staticmethod
    def rank_of(d_model: int, knobs: LowRankKnobs) -> int:
        return knobs.rank or max(1, d_model // 4)

    @classmethod
    def weights(cls, d_model, h, knobs):
        return 2 * cls.rank_of(d_model, knobs) * (d_model + h)

    @classmethod
    def linear(cls, n, m, d_model, knobs):
        return LowRankLinear(n=n, m=m, rank=cls.rank_of(d_model, knobs))


@dataclass(frozen=True)
class MonarchKnobs:
    blocks: int = knob(0, lo=0, hi=1 << 12,
                        help="blocks b of each block-diagonal factor, dividing d_model (0: the divisor nearest √d_model)")


@FFNS.register
class MonarchFFN(StructuredFFN):
    """Monarch FFN (``monarch``): each matrix two block-diagonal factors of b blocks with a
    permutation between; width (a multiple of b) matched to the dense FFN's parameters."""

    name = "monarch"
    paper = "Dao et al. 2022, Monarch; Qiu et al. 2024, Compute Better Spent"
    Knobs = MonarchKnobs

    @staticmethod
    def blocks_of(d_model: int, knobs: MonarchKnobs) -> int:
        return knobs.blocks or squarest_factor(d_model)

    @classmethod
    def check(cls, d_model, knobs):
        if d_model % cls.blocks_of(d_model, knobs):
            raise ConfigError(f"ffn kind 'monarch': blocks={knobs.blocks} must divide d_model={d_model}")

    @classmethod
    def weights(cls, d_model, h, knobs):
        b = cls.blocks_of(d_model, knobs)
        return None if h % b else 2 * b * (d_model + h)

    @classmethod
    def linear(cls, n, m, d_model, knobs):
        b = cls.blocks_of(d_model, knobs)
        return BTTLinear(n=n, m=m, rank=1, n1=b, m1=b)


@dataclass(frozen=True)
class BTTKnobs:
    rank: int = knob(2, lo=1, hi=64, help="tensor-train rank r of each matrix (factors near √n, √m)")


@FFNS.register
class BTTFFN(StructuredFFN):
    """Block tensor-train FFN (``btt``): each matrix two BTT cores of rank r with near-square
    factors; width matched to the dense FFN's parameters."""

    name = "btt"
    paper = "Qiu et al. 2024, Compute Better Spent: Replacing Dense Layers with Structured Matrices"
    Knobs = BTTKnobs

    @staticmethod
    def factor(h: int) -> Optional[int]:
        """h's near-square factor, or None when h is too far from square (a prime h would
        make one core a plain dense map)."""
        f = squarest_factor(h)
        return f if f >= 2 and h // f <= 4 * f else None

    @classmethod
    def check(cls, d_model, knobs):
        if cls.factor(d_model) is None:
            raise ConfigError(f"ffn kind 'btt': d_model={d_model} has no near-square factorisation")

    @classmethod
    def weights(cls, d_model, h, knobs):
        fh, fd = cls.factor(h), cls.factor(d_model)
        if fh is None:
            return None
        # up D → h (input factor fd, output factor fh), down h → D (input fh, output fd)
        return knobs.rank * (d_model * fh + h * fd) + knobs.rank * (h * fd + d_model * fh)

    @classmethod
    def linear(cls, n, m, d_model, knobs):
        return BTTLinear(n=n, m=m, rank=knobs.rank, n1=cls.factor(n), m1=cls.factor(m))
