"""parity (ACT, PonderNet, AdaTape): is the count of ``1`` tokens odd?

Input: n tokens from {-1, 0, 1} with k of them non-zero, then ``?``. Target at ``?``:
``1`` if the number of ``1`` tokens is odd, else ``0``. Complexity: k (the non-zeros one
must look at). Feature ``ones`` at ``?`` (execution state): the count of ``1`` tokens a
scan has to track. Train/valid/test draw n in [n_min, n_max] and k in [k_min, min(k_max, n)];
ood draws k in [ood_k_min, ood_k_max] (more non-zeros) with n in [ood_n_min, ood_n_max].
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register


@dataclass(frozen=True)
class ParityConfig:
    n_min: int = knob(8, 1, 4096, "shortest vector (train/valid/test)")
    n_max: int = knob(8, 1, 4096, "longest vector (train/valid/test)")
    k_min: int = knob(1, 0, 4096, "fewest non-zeros (train)")
    k_max: int = knob(8, 0, 4096, "most non-zeros (train)")
    ood_n_min: int = knob(12, 1, 4096, "shortest vector (ood)")
    ood_n_max: int = knob(12, 1, 4096, "longest vector (ood)")
    ood_k_min: int = knob(9, 0, 4096, "fewest non-zeros (ood): must exceed k_max")
    ood_k_max: int = knob(12, 0, 4096, "most non-zeros (ood)")


@register
class Parity(Task):
    name = "parity"
    causal = False
    complexity_doc = "number of non-zero elements k"
    Config = ParityConfig
    size_knobs = {"n": ("n_min", "n_max"), "k": ("k_min", "k_max")}
    execution_features = ("ones",)
    presets = {
        "small": dict(n_min=8, n_max=8, k_min=1, k_max=8, ood_n_min=12, ood_n_max=12,
                      ood_k_min=9, ood_k_max=12),
        "adatape": dict(n_min=16, n_max=16, k_min=1, k_max=16, ood_n_min=24, ood_n_max=24,
                        ood_k_min=17, ood_k_max=24),
        "pondernet": dict(n_min=96, n_max=96, k_min=1, k_max=48, ood_n_min=96, ood_n_max=96,
                          ood_k_min=49, ood_k_max=96),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("parity: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.k_min > c.k_max or c.ood_k_min > c.ood_k_max:
            raise ConfigError("parity: k_min must be <= k_max (and ood_k_min <= ood_k_max)")
        if c.k_min > c.n_max or c.ood_k_min > c.ood_n_max:
            raise ConfigError("parity: k_min cannot exceed the longest vector")
        if c.ood_k_min <= c.k_max:
            raise ConfigError("parity: ood_k_min must lie strictly beyond k_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(c.ood_n_min, c.ood_n_max), k=(c.ood_k_min, c.ood_k_max))
        return dict(n=(c.n_min, c.n_max), k=(c.k_min, c.k_max))

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        # a vector holds at least k tokens (a sweep may pin k beyond n_max; otherwise
        # k_min <= n_max and this is randint(max(n_lo, k_lo), n_hi))
        n = rng.randint(max(p["n"][0], p["k"][0]), max(p["n"][1], p["k"][0]))
        k = rng.randint(p["k"][0], min(p["k"][1], n))
        values = ["0"] * n
        for i in rng.sample(range(n), k):
            values[i] = rng.choice(("-1", "1"))
        ones = values.count("1")
        tokens = values + ["?"]
        target: list[str | None] = [None] * n + [str(ones % 2)]
        complexity: list[int | None] = [None] * n + [k]
        features = {"position": list(range(n + 1)), "n": [n] * (n + 1),
                    "ones": [None] * n + [ones]}
        return Draft(tokens, target, complexity, features, {"n": n, "k": k})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        if not input or input[-1] != "?":
            raise ConfigError("parity: the input must end with '?'")
        for i, tok in enumerate(input[:-1]):
            if tok not in ("-1", "0", "1"):
                raise ConfigError(f"parity: token {tok!r} at position {i} is not -1, 0 or 1")
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        odd = False
        nonzero = 0
        for tok in input[:-1]:
            if tok == "1":
                odd = not odd
            if tok != "0":
                nonzero += 1
        target[-1] = "1" if odd else "0"
        complexity[-1] = nonzero
        return target, complexity

    def tokens(self) -> list[str]:
        return ["-1", "0", "1", "?"]
