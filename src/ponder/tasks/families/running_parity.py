"""running_parity (causal): the parity of every prefix of a bit string.

Input: n tokens from {``0``, ``1``}. Target at every position i: ``1`` if bits 0..i hold
an odd number of ``1`` tokens, else ``0``. Complexity at i: the number of ``1`` tokens in
the prefix 0..i (the flips one must have tracked), also the execution-state feature
``ones_so_far``; ``bit`` (the token) is a static cue. Causal: position i depends only on
input[0..i]. Train/valid/test draw n in [n_min, n_max] and each bit is ``1`` with
probability ``p_one``; ood draws longer strings, n in [ood_n_min, ood_n_max].
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register


@dataclass(frozen=True)
class RunningParityConfig:
    n_min: int = knob(8, 1, 4096, "shortest string (train/valid/test)")
    n_max: int = knob(16, 1, 4096, "longest string (train/valid/test)")
    ood_n_min: int = knob(20, 1, 4096, "shortest string (ood): must exceed n_max")
    ood_n_max: int = knob(32, 1, 4096, "longest string (ood)")
    p_one: float = knob(0.5, 0.0, 1.0, "probability of each bit being 1")


@register
class RunningParity(Task):
    name = "running_parity"
    causal = True
    complexity_doc = "number of 1 bits in the prefix 0..i"
    Config = RunningParityConfig
    size_knobs = {"n": ("n_min", "n_max")}
    execution_features = ("ones_so_far",)
    presets = {
        "small": dict(n_min=8, n_max=16, ood_n_min=20, ood_n_max=32),
        "long": dict(n_min=32, n_max=64, ood_n_min=96, ood_n_max=128),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("running_parity: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.ood_n_min <= c.n_max:
            raise ConfigError("running_parity: ood_n_min must lie strictly beyond n_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(c.ood_n_min, c.ood_n_max))
        return dict(n=(c.n_min, c.n_max))

    def sample(self, rng: random.Random, split: str) -> Draft:
        lo, hi = self.split_params(split)["n"]
        n = rng.randint(lo, hi)
        p = self.config.p_one
        bits = [1 if rng.random() < p else 0 for _ in range(n)]
        target: list[str | None] = []
        complexity: list[int | None] = []
        ones = 0
        for b in bits:
            ones += b
            target.append(str(ones & 1))
            complexity.append(ones)
        # ones_so_far: the count a left-to-right scan has tracked (execution state)
        features = {"position": list(range(n)), "n": [n] * n, "bit": bits,
                    "ones_so_far": list(complexity)}
        return Draft([str(b) for b in bits], target, complexity, features, {"n": n})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        # Recount every prefix from scratch: quadratic, but obviously right.
        target: list[str | None] = []
        complexity: list[int | None] = []
        for i in range(len(input)):
            count = sum(1 for tok in input[: i + 1] if tok == "1")
            target.append("1" if count % 2 == 1 else "0")
            complexity.append(count)
        return target, complexity

    def tokens(self) -> list[str]:
        return ["0", "1"]
