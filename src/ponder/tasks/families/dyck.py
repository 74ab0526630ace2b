"""dyck (causal): which closing bracket must come next in a Dyck-k string?

Input: a balanced string over k <= 4 bracket types (``( )``, ``[ ]``, ``{ }``, ``< >``,
the first k of them) whose stack depth never exceeds D and reaches exactly d somewhere
(d is drawn per example, so every split really contains its depths). Target at each
position i, after reading input[0..i]: the closing bracket of the innermost open bracket
(the next closing bracket must be that one), or ``none`` when the stack is empty.
Complexity: the stack depth after position i. Execution state: ``stack_depth`` (the same
depth) and ``distance``: how many tokens back the matching (innermost unclosed) open
bracket is (0 when token i is that bracket; null when the stack is empty). Static:
``max_depth``: d; ``n``: the length; ``position``.

Train/valid/test draw d in [1, depth_max] and the (even) length in [n_min, n_max]; ood
draws d in [ood_depth_min, ood_depth_max] and lengths in [ood_n_min, ood_n_max]; ood must
be deeper (ood_depth_min > depth_max) or longer (ood_n_min > n_max).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

PAIRS: tuple[tuple[str, str], ...] = (("(", ")"), ("[", "]"), ("{", "}"), ("<", ">"))
CLOSER = dict(PAIRS)
OPENER = {c: o for o, c in PAIRS}
NONE = "none"


@dataclass(frozen=True)
class DyckConfig:
    k: int = knob(2, 1, 4, "number of bracket types")
    n_min: int = knob(8, 2, 8192, "shortest string (train/valid/test)")
    n_max: int = knob(24, 2, 8192, "longest string (train/valid/test)")
    depth_max: int = knob(4, 1, 4096, "deepest nesting (train/valid/test)")
    ood_n_min: int = knob(16, 2, 8192, "shortest string (ood)")
    ood_n_max: int = knob(40, 2, 8192, "longest string (ood)")
    ood_depth_min: int = knob(5, 1, 4096, "shallowest maximal nesting (ood)")
    ood_depth_max: int = knob(8, 1, 4096, "deepest nesting (ood)")


@register
class Dyck(Task):
    name = "dyck"
    causal = True
    complexity_doc = "stack depth after the position"
    Config = DyckConfig
    size_knobs = {"n": ("n_min", "n_max")}
    execution_features = ("stack_depth", "distance")
    presets = {
        "small": dict(k=2, n_min=8, n_max=24, depth_max=4, ood_n_min=16, ood_n_max=40,
                      ood_depth_min=5, ood_depth_max=8),
        # Bounded-depth Dyck as in Yao et al. 2021 (D=10, train lengths <= 700, test longer),
        # with the k <= 4 bracket types this suite spells out.
        "bounded": dict(k=4, n_min=20, n_max=700, depth_max=10, ood_n_min=702, ood_n_max=1400,
                        ood_depth_min=10, ood_depth_max=10),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("dyck: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.ood_depth_min > c.ood_depth_max:
            raise ConfigError("dyck: ood_depth_min must be <= ood_depth_max")
        if _even_in(max(c.n_min, 2), c.n_max) is None:
            raise ConfigError("dyck: [n_min, n_max] holds no even length")
        if _even_in(max(c.ood_n_min, 2 * c.ood_depth_min), c.ood_n_max) is None:
            raise ConfigError("dyck: ood_n_max is too short to reach depth ood_depth_min "
                              "(needs >= 2 * ood_depth_min)")
        if not (c.ood_depth_min > c.depth_max or c.ood_n_min > c.n_max):
            raise ConfigError("dyck: ood must lie strictly beyond train: ood_depth_min > "
                              "depth_max or ood_n_min > n_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(c.ood_n_min, c.ood_n_max), depth=(c.ood_depth_min, c.ood_depth_max),
                        k=c.k)
        return dict(n=(c.n_min, c.n_max), depth=(1, c.depth_max), k=c.k)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        lo, hi = p["n"]
        d_hi = min(p["depth"][1], hi // 2)  # a depth-d string needs at least 2d tokens
        d = rng.randint(min(p["depth"][0], d_hi), d_hi)
        n_lo = max(lo, 2 * d)
        n = 2 * rng.randint((n_lo + 1) // 2, hi // 2)
        tokens = _walk(rng, n, d, p["k"])

        target: list[str | None] = []
        complexity: list[int | None] = []
        distance: list[int | None] = []
        stack: list[int] = []  # positions of unclosed open brackets
        for i, tok in enumerate(tokens):
            if tok in CLOSER:
                stack.append(i)
            else:
                stack.pop()
            if stack:
                top = stack[-1]
                target.append(CLOSER[tokens[top]])
                distance.append(i - top)
            else:
                target.append(NONE)
                distance.append(None)
            complexity.append(len(stack))
        features = {"position": list(range(n)), "n": [n] * n, "max_depth": [d] * n,
                    "distance": distance, "stack_depth": list(complexity)}
        return Draft(tokens, target, complexity, features, {"n": n, "depth": d, "k": p["k"]})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        target: list[str | None] = []
        complexity: list[int | None] = []
        known = set(self.tokens()) - {NONE}
        opened: list[str] = []  # only to validate: each closer must match the innermost opener
        for i, tok in enumerate(input):
            if tok not in known:
                raise ConfigError(f"dyck: token {tok!r} at position {i} is not a bracket of "
                                  f"the k={self.config.k} types")
            if tok in CLOSER:
                opened.append(tok)
            elif not opened:
                raise ConfigError(f"dyck: unbalanced close at position {i}")
            elif CLOSER[opened.pop()] != tok:
                raise ConfigError(f"dyck: {tok!r} at position {i} closes a bracket of another "
                                  "type (wrong type or crossing pairs)")
        opens = 0
        for i, tok in enumerate(input):
            opens += 1 if tok in CLOSER else -1
            complexity.append(opens)
            # Walk back from i, skipping matched pairs, to the innermost unclosed opener.
            pending = 0
            found = NONE
            for j in range(i, -1, -1):
                if input[j] in OPENER:
                    pending += 1
                elif pending:
                    pending -= 1
                else:
                    found = CLOSER[input[j]]
                    break
            target.append(found)
        return target, complexity

    def train_labels(self) -> frozenset[str]:
        """Exact: the closers of the k bracket types, and ``none`` (every string ends empty)."""
        return frozenset([NONE] + [c for _, c in PAIRS[: self.config.k]])

    def tokens(self) -> list[str]:
        out = [NONE]
        for o, c in PAIRS[: self.config.k]:
            out += [o, c]
        return out


def _even_in(lo: int, hi: int) -> int | None:
    """The smallest even number in [lo, hi], or None."""
    e = lo + (lo % 2)
    return e if e <= hi else None


def _walk(rng: random.Random, n: int, d: int, k: int) -> list[str]:
    """A random balanced string of even length n >= 2d whose maximal depth is exactly d."""
    opens = [o for o, _ in PAIRS[:k]]
    tokens: list[str] = []
    stack: list[str] = []
    reached = False
    for i in range(n):
        h, left = len(stack), n - i  # depth now; steps left including this one
        can_open = h < d and h + 1 <= left - 1
        # Closing must leave room to climb to d and come back down, until d was reached.
        can_close = h > 0 and (reached or (d - h + 1) + d <= left - 1)
        if can_open and (not can_close or rng.random() < 0.5):
            o = rng.choice(opens)
            stack.append(o)
            tokens.append(o)
            if len(stack) == d:
                reached = True
        else:
            tokens.append(CLOSER[stack.pop()])
    return tokens
