"""listops (LRA, NDR): evaluate nested lists of MAX / MIN / MED / SM over digits.

Input: a nested expression such as ``[MAX 3 [MIN 4 7 ] 1 ]``: operators ``[MAX`` ``[MIN``
``[MED`` ``[SM`` (sum mod 10) open a list, ``]`` closes it, arguments are digits 0-9 or
lists, every list has at least 2 arguments. ``[MED`` of an even count is the floor of the
mean of the two middle values (the LRA/NDR convention). Target at every ``]``: the value of
the list it closes. Complexity: the height of that sub-tree (a list of digits only has
height 1). Features: ``nesting`` (0 at the root list), ``n_args``, ``subtree_size`` (tokens
of the sub-expression), ``position``, ``n`` (tokens), ``depth`` (height of the whole tree).
Every example's tree has an exact height drawn from [depth_min, depth_max] (ood: from
[ood_depth_min, ood_depth_max], strictly deeper); one argument of each list carries the
height, the others are sub-lists with probability ``p_list`` (of a random lower height).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

OPS = ("[MAX", "[MIN", "[MED", "[SM")
DIGITS = [str(d) for d in range(10)]


def _apply(op: str, values: list[int]) -> int:
    if op == "[MAX":
        return max(values)
    if op == "[MIN":
        return min(values)
    if op == "[SM":
        return sum(values) % 10
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


@dataclass(frozen=True)
class ListOpsConfig:
    depth_min: int = knob(1, 1, 20, "lowest tree height (train/valid/test)")
    depth_max: int = knob(4, 1, 20, "highest tree height (train/valid/test)")
    ood_depth_min: int = knob(5, 1, 20, "lowest tree height (ood): must exceed depth_max")
    ood_depth_max: int = knob(6, 1, 20, "highest tree height (ood)")
    args_min: int = knob(2, 2, 20, "fewest arguments per list")
    args_max: int = knob(4, 2, 20, "most arguments per list")
    p_list: float = knob(0.25, 0.0, 0.9, "probability that a non-critical argument is a sub-list")


@register
class ListOps(Task):
    name = "listops"
    causal = False
    complexity_doc = "height of the sub-tree closed by the ] (1 = a list of digits)"
    Config = ListOpsConfig
    presets = {
        "small": dict(depth_min=1, depth_max=4, ood_depth_min=5, ood_depth_max=6, args_min=2,
                      args_max=4, p_list=0.25),
        # LRA-like: deep trees with many arguments (sequences of a few hundred tokens).
        "lra": dict(depth_min=1, depth_max=10, ood_depth_min=11, ood_depth_max=14, args_min=2,
                    args_max=5, p_list=0.1),
        # NDR-like: short lists, depth 1..6 in training, 7..8 out of distribution.
        "ndr": dict(depth_min=1, depth_max=6, ood_depth_min=7, ood_depth_max=8, args_min=2,
                    args_max=3, p_list=0.2),
    }

    def check(self) -> None:
        c = self.config
        if c.depth_min > c.depth_max or c.ood_depth_min > c.ood_depth_max:
            raise ConfigError("listops: depth_min must be <= depth_max (and ood_depth_min <= ood_depth_max)")
        if c.ood_depth_min <= c.depth_max:
            raise ConfigError("listops: ood_depth_min must lie strictly beyond depth_max")
        if c.args_min > c.args_max:
            raise ConfigError("listops: args_min must be <= args_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        depth = (c.ood_depth_min, c.ood_depth_max) if split == "ood" else (c.depth_min, c.depth_max)
        return dict(depth=depth, args=(c.args_min, c.args_max), p_list=c.p_list)

    def _tree(self, rng: random.Random, height: int, p: dict) -> tuple:
        """A list of exactly ``height``: (op, [children]) where a child is an int or a tree."""
        k = rng.randint(*p["args"])
        tall = rng.randrange(k)
        children: list = []
        for i in range(k):
            if height > 1 and i == tall:
                children.append(self._tree(rng, height - 1, p))
            elif height > 1 and rng.random() < p["p_list"]:
                children.append(self._tree(rng, rng.randint(1, height - 1), p))
            else:
                children.append(rng.randrange(10))
        return (rng.choice(OPS), children)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        depth = rng.randint(*p["depth"])
        tree = self._tree(rng, depth, p)
        tokens: list[str] = []
        target: list[str | None] = []
        complexity: list[int | None] = []
        nesting: list[int | None] = []
        n_args: list[int | None] = []
        size: list[int | None] = []

        def emit(node: tuple, level: int) -> tuple[int, int]:
            op, children = node
            start = len(tokens)
            tokens.append(op)
            for seq in (target, complexity, nesting, n_args, size):
                seq.append(None)
            values, height = [], 0
            for child in children:
                if isinstance(child, int):
                    tokens.append(DIGITS[child])
                    for seq in (target, complexity, nesting, n_args, size):
                        seq.append(None)
                    values.append(child)
                else:
                    v, h = emit(child, level + 1)
                    values.append(v)
                    height = max(height, h)
            value = _apply(op, values)
            tokens.append("]")
            target.append(DIGITS[value])
            complexity.append(height + 1)
            nesting.append(level)
            n_args.append(len(children))
            size.append(len(tokens) - start)
            return value, height + 1

        emit(tree, 0)
        L = len(tokens)
        features = {"position": list(range(L)), "n": [L] * L, "depth": [depth] * L,
                    "nesting": nesting, "n_args": n_args, "subtree_size": size}
        return Draft(tokens, target, complexity, features, {"depth": depth, "n": L})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)

        def parse(i: int) -> tuple[int, int, int]:
            """Parse the list opening at ``i``; return (value, height, index after it)."""
            op = input[i]
            if op not in OPS:
                raise ValueError(f"expected an operator at {i}, got {input[i]!r}")
            i += 1
            args: list[int] = []
            height = 1
            while input[i] != "]":
                if input[i] in OPS:
                    v, h, i = parse(i)
                    args.append(v)
                    height = max(height, h + 1)
                else:
                    args.append(int(input[i]))
                    i += 1
            if op == "[MAX":
                v = max(args)
            elif op == "[MIN":
                v = min(args)
            elif op == "[SM":
                v = sum(args) % 10
            else:
                s = sorted(args)
                m = len(s)
                v = s[m // 2] if m % 2 == 1 else (s[m // 2 - 1] + s[m // 2]) // 2
            target[i], complexity[i] = str(v), height
            return v, height, i + 1

        end = parse(0)[2]
        if end != len(input):
            raise ValueError("trailing tokens after the expression")
        return target, complexity

    def tokens(self) -> list[str]:
        return list(OPS) + ["]"] + DIGITS
