"""listops (LRA, NDR): evaluate nested lists of MAX / MIN / MED / SM over digits.

Input: a nested expression such as ``[MAX 3 [MIN 4 7 ] 1 ]``: operators ``[MAX`` ``[MIN``
``[MED`` ``[SM`` (sum mod 10) open a list, ``]`` closes it, arguments are digits 0-9 or
lists, every list has at least 2 arguments. ``[MED`` of an even count is the floor of the
mean of the two middle values (the LRA/NDR convention). Target at every ``]``: the value of
the list it closes. Complexity: the height of that sub-tree (a list of digits only has
height 1). Features: ``nesting`` (0 at the root list), ``n_args``, ``subtree_size`` (tokens
of the sub-expression), ``dependency_depth`` (the height of the computation the value
depends on: 1 + that of the argument MIN / MAX select (the first one on ties) or of the
middle one(s) MED takes (in stable sorted order), 1 + the largest over all arguments for SM;
a digit counts 0 — NDR's ``max_dependency_depth`` minus 1), ``arg_height_max`` and
``arg_height_second`` (the tallest and second-tallest argument's height, a digit counting
0: when the last argument a bottom-up evaluation waits for is ready, and the one before),
``position``, ``n`` (tokens), ``depth`` (height of the whole tree). Execution state (for
the decision-timing probe): ``nesting``, the argument heights and ``dependency_depth``;
the rest are static cues. Every example's tree has an exact height drawn from
[depth_min, depth_max] (ood: from [ood_depth_min, ood_depth_max], strictly deeper); one
argument of each list carries the height, the others are sub-lists with probability
``p_list`` (of a random lower height). A tree whose length falls outside [n_min, n_max]
tokens is redrawn (height included), in every split.

Presets: ``lra`` follows Long Range Arena's ListOps (500–2,000 tokens, heights up to 9, up
to 10 arguments; ood: heights 10–12 at the same lengths); ``ndr`` the Neural Data Router's
(Csordás et al. 2022, ``dataset/listops.py`` and its ``big`` variant): at most 50 tokens,
2–5 arguments, NDR depths 2–6 in training (heights 1–5: NDR counts a digit as depth 1) and
its ``depth`` test set, depths 8–9, as ood (heights 7–8; NDR's valid depth 7 is height 6).
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


LENGTH_ATTEMPTS = 1000  # trees redrawn to fit [n_min, n_max] before giving up


def _length(tree: tuple) -> int:
    """Tokens of a tree (op, [children]): its operator, its ``]`` and its children's."""
    return 2 + sum(1 if isinstance(c, int) else _length(c) for c in tree[1])


def _depends_on(op: str, values: list[int]) -> list[int]:
    """Indices of the arguments the value of ``op`` over ``values`` depends on (NDR's rule)."""
    if op == "[SM":
        return list(range(len(values)))
    if op == "[MAX":
        return [values.index(max(values))]
    if op == "[MIN":
        return [values.index(min(values))]
    order = sorted(range(len(values)), key=lambda i: values[i])  # stable
    mid = len(values) // 2
    return [order[mid]] if len(values) % 2 else [order[mid - 1], order[mid]]


@dataclass(frozen=True)
class ListOpsConfig:
    depth_min: int = knob(1, 1, 20, "lowest tree height (train/valid/test)")
    depth_max: int = knob(4, 1, 20, "highest tree height (train/valid/test)")
    ood_depth_min: int = knob(5, 1, 20, "lowest tree height (ood): must exceed depth_max")
    ood_depth_max: int = knob(6, 1, 20, "highest tree height (ood)")
    args_min: int = knob(2, 2, 20, "fewest arguments per list")
    args_max: int = knob(4, 2, 20, "most arguments per list")
    p_list: float = knob(0.25, 0.0, 0.9, "probability that a non-critical argument is a sub-list")
    n_min: int = knob(1, 1, 100_000, "shortest input in tokens (longer or shorter trees are redrawn)")
    n_max: int = knob(100_000, 1, 100_000, "longest input in tokens")


@register
class ListOps(Task):
    name = "listops"
    causal = False
    complexity_doc = "height of the sub-tree closed by the ] (1 = a list of digits)"
    Config = ListOpsConfig
    size_knobs = {"depth": ("depth_min", "depth_max")}
    execution_features = ("nesting", "arg_height_max", "arg_height_second", "dependency_depth")
    presets = {
        "small": dict(depth_min=1, depth_max=4, ood_depth_min=5, ood_depth_max=6, args_min=2,
                      args_max=4, p_list=0.25),
        # Long Range Arena's ListOps: 500–2,000 tokens, heights ≤ 9, up to 10 arguments
        "lra": dict(depth_min=1, depth_max=9, ood_depth_min=10, ood_depth_max=12, args_min=2,
                    args_max=10, p_list=0.4, n_min=500, n_max=2000),
        # the Neural Data Router's ListOps (heights = NDR depth − 1): ≤ 50 tokens, 2–5 args
        "ndr": dict(depth_min=1, depth_max=5, ood_depth_min=7, ood_depth_max=8, args_min=2,
                    args_max=5, p_list=0.3, n_max=50),
    }

    def check(self) -> None:
        c = self.config
        if c.depth_min > c.depth_max or c.ood_depth_min > c.ood_depth_max:
            raise ConfigError("listops: depth_min must be <= depth_max (and ood_depth_min <= ood_depth_max)")
        if c.ood_depth_min <= c.depth_max:
            raise ConfigError("listops: ood_depth_min must lie strictly beyond depth_max")
        if c.args_min > c.args_max:
            raise ConfigError("listops: args_min must be <= args_max")
        if c.n_min > c.n_max or c.n_max < 2 * c.args_min + 2:
            raise ConfigError("listops: need n_min <= n_max and room for one list "
                              f"(n_max >= {2 * c.args_min + 2})")

    def split_params(self, split: str) -> dict:
        c = self.config
        depth = (c.ood_depth_min, c.ood_depth_max) if split == "ood" else (c.depth_min, c.depth_max)
        return dict(depth=depth, args=(c.args_min, c.args_max), p_list=c.p_list,
                    n=(c.n_min, c.n_max))

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
        for _ in range(LENGTH_ATTEMPTS):
            depth = rng.randint(*p["depth"])
            tree = self._tree(rng, depth, p)
            if p["n"][0] <= _length(tree) <= p["n"][1]:
                return self._draft(tree, depth)
        raise ConfigError(f"listops: no tree of {p['n'][0]}..{p['n'][1]} tokens in "
                          f"{LENGTH_ATTEMPTS} draws ({split}); widen n_min/n_max or change the heights")

    def _draft(self, tree: tuple, depth: int) -> Draft:
        tokens: list[str] = []
        target: list[str | None] = []
        complexity: list[int | None] = []
        nesting: list[int | None] = []
        n_args: list[int | None] = []
        size: list[int | None] = []
        dependency: list[int | None] = []
        arg_max: list[int | None] = []
        arg_second: list[int | None] = []
        columns = (target, complexity, nesting, n_args, size, dependency, arg_max, arg_second)

        def emit(node: tuple, level: int) -> tuple[int, int, int]:
            op, children = node
            start = len(tokens)
            tokens.append(op)
            for seq in columns:
                seq.append(None)
            values, deps, heights = [], [], []
            for child in children:
                if isinstance(child, int):
                    tokens.append(DIGITS[child])
                    for seq in columns:
                        seq.append(None)
                    values.append(child)
                    deps.append(0)
                    heights.append(0)
                else:
                    v, h, dep = emit(child, level + 1)
                    values.append(v)
                    deps.append(dep)
                    heights.append(h)
            height = max(heights)
            ranked = sorted(heights, reverse=True)
            value = _apply(op, values)
            tokens.append("]")
            target.append(DIGITS[value])
            complexity.append(height + 1)
            nesting.append(level)
            n_args.append(len(children))
            size.append(len(tokens) - start)
            dep = 1 + max(deps[i] for i in _depends_on(op, values))
            dependency.append(dep)
            arg_max.append(ranked[0])
            arg_second.append(ranked[1])  # every list has >= 2 arguments
            return value, height + 1, dep

        emit(tree, 0)
        L = len(tokens)
        features = {"position": list(range(L)), "n": [L] * L, "depth": [depth] * L,
                    "nesting": nesting, "n_args": n_args, "subtree_size": size,
                    "dependency_depth": dependency, "arg_height_max": arg_max,
                    "arg_height_second": arg_second}
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
