"""table_lookup (compositional table lookup, NDR): apply a chain of random 3-bit bijections.

The config fixes K random bijections ``f0 .. f{K-1}`` on 3-bit strings (drawn from
``table_seed``, so they are part of the config). Input: ``f_a f_b ... f_z 101``: d function
tokens then a 3-bit argument; functions apply right to left. Target at each function token:
the 3-bit value (one token, e.g. ``011``) after applying that function and everything to its
right. Complexity: the number of functions applied so far (1 for the rightmost function).
Features: ``position``, ``depth`` (d, the example's size); execution state: ``applied``
(functions applied so far, right to left, this one included). Train depth d in
[depth_min, depth_max] (default 1..5), ood in [ood_depth_min, ood_depth_max] (6..8).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

WORDS = [format(v, "03b") for v in range(8)]


@dataclass(frozen=True)
class TableLookupConfig:
    n_functions: int = knob(8, 1, 64, "number K of random bijections f0..f{K-1}")
    table_seed: int = knob(0, 0, 2**31 - 1, "seed that draws the bijections")
    depth_min: int = knob(1, 1, 256, "fewest functions (train/valid/test)")
    depth_max: int = knob(5, 1, 256, "most functions (train/valid/test)")
    ood_depth_min: int = knob(6, 1, 256, "fewest functions (ood): must exceed depth_max")
    ood_depth_max: int = knob(8, 1, 256, "most functions (ood)")


@register
class TableLookup(Task):
    name = "table_lookup"
    causal = False
    complexity_doc = "number of functions applied so far (counted from the right)"
    Config = TableLookupConfig
    size_knobs = {"depth": ("depth_min", "depth_max")}
    execution_features = ("applied",)
    presets = {
        "small": dict(n_functions=8, depth_min=1, depth_max=5, ood_depth_min=6, ood_depth_max=8),
        "ndr": dict(n_functions=8, depth_min=1, depth_max=5, ood_depth_min=6, ood_depth_max=8),
        "long": dict(n_functions=16, depth_min=1, depth_max=12, ood_depth_min=13, ood_depth_max=24),
    }

    def check(self) -> None:
        c = self.config
        if c.depth_min > c.depth_max or c.ood_depth_min > c.ood_depth_max:
            raise ConfigError("table_lookup: depth_min must be <= depth_max (and ood_depth_min <= ood_depth_max)")
        if c.ood_depth_min <= c.depth_max:
            raise ConfigError("table_lookup: ood_depth_min must lie strictly beyond depth_max")
        table_rng = random.Random(f"table_lookup|{c.table_seed}|{c.n_functions}")
        self.tables: list[dict[str, str]] = []
        for _ in range(c.n_functions):
            image = list(WORDS)
            table_rng.shuffle(image)
            self.tables.append(dict(zip(WORDS, image)))

    def split_params(self, split: str) -> dict:
        c = self.config
        depth = (c.ood_depth_min, c.ood_depth_max) if split == "ood" else (c.depth_min, c.depth_max)
        return dict(depth=depth, n_functions=c.n_functions)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        d = rng.randint(*p["depth"])
        funcs = [rng.randrange(p["n_functions"]) for _ in range(d)]
        arg = rng.choice(WORDS)
        values: list[str] = []
        x = arg
        for f in reversed(funcs):
            x = self.tables[f][x]
            values.append(x)
        values.reverse()
        tokens = [f"f{f}" for f in funcs] + [arg]
        target: list[str | None] = values + [None]
        complexity: list[int | None] = [d - i for i in range(d)] + [None]
        features = {"position": list(range(d + 1)), "depth": [d] * (d + 1),
                    "applied": list(complexity)}
        return Draft(tokens, target, complexity, features, {"depth": d})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        arg = input[-1]
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        # For each function token, apply it and everything to its right, from scratch.
        for i in range(len(input) - 1):
            value = arg
            chain = input[i:-1]
            for tok in reversed(chain):
                value = self.tables[int(tok[1:])][value]
            target[i] = value
            complexity[i] = len(chain)
        return target, complexity

    def tokens(self) -> list[str]:
        return [f"f{k}" for k in range(self.config.n_functions)] + WORDS
