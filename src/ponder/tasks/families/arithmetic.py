"""arithmetic (NDR's simple arithmetic, plus ``-``): parenthesised expressions mod 10.

Input: e.g. ``( ( 3 + 4 ) * 2 )``: every bracket holds exactly one operator and two operands
(digits or brackets). Target at every ``)``: the value of the bracket it closes, mod 10
(in 0..9, never negative). Complexity: the height of that sub-tree (a bracket of two digits
has height 1). Features: ``nesting`` (0 at the outer bracket), ``subtree_size`` (tokens),
``arg_height_max`` / ``arg_height_min`` (the taller and the shorter operand's height, a
digit counting 0), ``position``, ``n`` (tokens), ``depth`` (height of the whole
expression). Execution state (for the decision-timing probe): ``nesting`` and the operand
heights; the rest are static cues. Every example has
an exact height drawn from [depth_min, depth_max] (ood: [ood_depth_min, ood_depth_max],
strictly deeper); one operand of each bracket carries the height, the other is a bracket
with probability ``p_nest`` (of a random lower height), else a digit. Operators:
``operators="+-*"`` (default) or ``"+*"``, the only two of NDR's task (Csordás et al. 2022,
``dataset/simple_arithmetic.py``; the ``-`` is ours). NDR counts a digit as depth 1, so its
depth is our height + 1: the ``ndr`` preset trains on NDR depths 2–6 (heights 1–5) and takes
its ``deeper`` set, depths 8–9, as ood (heights 7–8; NDR's valid depth 7 is height 6).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

OPERATORS = ("+", "-", "*")
DIGITS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class ArithmeticConfig:
    depth_min: int = knob(1, 1, 20, "lowest expression height (train/valid/test)")
    depth_max: int = knob(4, 1, 20, "highest expression height (train/valid/test)")
    ood_depth_min: int = knob(5, 1, 20, "lowest expression height (ood): must exceed depth_max")
    ood_depth_max: int = knob(6, 1, 20, "highest expression height (ood)")
    p_nest: float = knob(0.3, 0.0, 0.9, "probability that the other operand is a bracket")
    operators: str = knob("+-*", choices=("+-*", "+*"), help="the operators drawn (NDR: +*)")


@register
class Arithmetic(Task):
    name = "arithmetic"
    causal = False
    complexity_doc = "height of the sub-tree closed by the ) (1 = two digits)"
    Config = ArithmeticConfig
    size_knobs = {"depth": ("depth_min", "depth_max")}
    execution_features = ("nesting", "arg_height_max", "arg_height_min")
    presets = {
        "small": dict(depth_min=1, depth_max=4, ood_depth_min=5, ood_depth_max=6, p_nest=0.3),
        # NDR's split (heights = NDR depth − 1): train 1–5, its "deeper" set 7–8; + and * only.
        "ndr": dict(depth_min=1, depth_max=5, ood_depth_min=7, ood_depth_max=8, p_nest=0.3,
                    operators="+*"),
    }

    def check(self) -> None:
        c = self.config
        if c.depth_min > c.depth_max or c.ood_depth_min > c.ood_depth_max:
            raise ConfigError("arithmetic: depth_min must be <= depth_max (and ood_depth_min <= ood_depth_max)")
        if c.ood_depth_min <= c.depth_max:
            raise ConfigError("arithmetic: ood_depth_min must lie strictly beyond depth_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        depth = (c.ood_depth_min, c.ood_depth_max) if split == "ood" else (c.depth_min, c.depth_max)
        return dict(depth=depth, p_nest=c.p_nest, operators=tuple(c.operators))

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        depth = rng.randint(*p["depth"])
        tokens: list[str] = []
        target: list[str | None] = []
        complexity: list[int | None] = []
        nesting: list[int | None] = []
        size: list[int | None] = []
        arg_max: list[int | None] = []
        arg_min: list[int | None] = []

        def blank() -> None:
            for seq in (target, complexity, nesting, size, arg_max, arg_min):
                seq.append(None)

        def operand(height: int, level: int) -> int:
            if height == 0:
                d = rng.randrange(10)
                tokens.append(DIGITS[d])
                blank()
                return d
            return bracket(height, level)

        def bracket(height: int, level: int) -> int:
            start = len(tokens)
            tokens.append("(")
            blank()
            other = rng.randint(1, height - 1) if height > 1 and rng.random() < p["p_nest"] else 0
            heights = [height - 1, other] if rng.random() < 0.5 else [other, height - 1]
            x = operand(heights[0], level + 1)
            op = rng.choice(p["operators"])
            tokens.append(op)
            blank()
            y = operand(heights[1], level + 1)
            value = (x + y if op == "+" else x - y if op == "-" else x * y) % 10
            tokens.append(")")
            target.append(DIGITS[value])
            complexity.append(height)
            nesting.append(level)
            size.append(len(tokens) - start)
            arg_max.append(max(heights))
            arg_min.append(min(heights))
            return value

        bracket(depth, 0)
        L = len(tokens)
        features = {"position": list(range(L)), "n": [L] * L, "depth": [depth] * L,
                    "nesting": nesting, "subtree_size": size, "arg_height_max": arg_max,
                    "arg_height_min": arg_min}
        return Draft(tokens, target, complexity, features, {"depth": depth, "n": L})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)

        def expr(i: int) -> tuple[int, int, int]:
            """Parse an operand at ``i``; return (value, height, next index)."""
            if input[i] != "(":
                return int(input[i]), 0, i + 1
            x, hx, i = expr(i + 1)
            op = input[i]
            y, hy, i = expr(i + 1)
            if input[i] != ")":
                raise ValueError(f"expected ) at {i}")
            if op == "+":
                v = x + y
            elif op == "-":
                v = x - y
            elif op == "*":
                v = x * y
            else:
                raise ValueError(f"unknown operator {op!r}")
            v %= 10
            h = 1 + max(hx, hy)
            target[i], complexity[i] = str(v), h
            return v, h, i + 1

        if expr(0)[2] != len(input):
            raise ValueError("trailing tokens after the expression")
        return target, complexity

    def tokens(self) -> list[str]:
        return ["(", ")"] + list(self.config.operators) + DIGITS
