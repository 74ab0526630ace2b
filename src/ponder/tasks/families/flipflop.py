"""flipflop (causal; flip-flop language modelling): remember the last written bit.

Input: a stream of instructions ``w0`` ``w1`` (write a bit), ``i0`` ``i1`` (ignore; the bit
is noise), ``r`` (read). The first instruction is a write and the last one is a read, so
every example has at least one scored position. Target at each ``r``: the last written bit
(``0``/``1``), which depends only on the prefix. Complexity: the number of instructions
strictly between the last write and this ``r`` (ignores and earlier reads alike).

Each instruction after the first is an ignore with probability ``p_ignore`` and otherwise
a write or a read with equal probability. Train/valid/test draw the length in
[n_min, n_max] with ``p_ignore``; ood draws in [ood_n_min, ood_n_max] with
``ood_p_ignore``, and must be beyond train in length or in ignore probability (longer gaps).
Features: ``position``, ``n`` (size); execution state at a read: ``since_write`` (how many
instructions back the last write is: the gap + 1), ``ignores_between`` and
``reads_between`` (the two parts of the gap), ``writes_before`` (writes so far).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

WRITES = ("w0", "w1")
IGNORES = ("i0", "i1")
READ = "r"


@dataclass(frozen=True)
class FlipFlopConfig:
    n_min: int = knob(8, 2, 8192, "shortest stream (train/valid/test)")
    n_max: int = knob(32, 2, 8192, "longest stream (train/valid/test)")
    p_ignore: float = knob(0.5, 0.0, 0.99, "probability of an ignore instruction (train)")
    ood_n_min: int = knob(40, 2, 8192, "shortest stream (ood)")
    ood_n_max: int = knob(64, 2, 8192, "longest stream (ood)")
    ood_p_ignore: float = knob(0.8, 0.0, 0.99, "probability of an ignore instruction (ood)")


@register
class FlipFlop(Task):
    name = "flipflop"
    causal = True
    complexity_doc = "instructions strictly between the last write and the read"
    Config = FlipFlopConfig
    size_knobs = {"n": ("n_min", "n_max")}
    execution_features = ("since_write", "ignores_between", "reads_between", "writes_before")
    presets = {
        "small": dict(n_min=8, n_max=32, p_ignore=0.5, ood_n_min=40, ood_n_max=64,
                      ood_p_ignore=0.8),
        # Flip-flop language modelling (Liu et al. 2023): T=512, FFL(0.8) in distribution,
        # sparse-write FFL(0.98) out of distribution.
        "glitches": dict(n_min=512, n_max=512, p_ignore=0.8, ood_n_min=512, ood_n_max=512,
                         ood_p_ignore=0.98),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("flipflop: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.ood_n_min < c.n_min or c.ood_p_ignore < c.p_ignore:
            raise ConfigError("flipflop: ood must not be shorter or sparser than train")
        if not (c.ood_n_min > c.n_max or c.ood_p_ignore > c.p_ignore):
            raise ConfigError("flipflop: ood must lie strictly beyond train: ood_n_min > n_max "
                              "or ood_p_ignore > p_ignore")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(c.ood_n_min, c.ood_n_max), p_ignore=c.ood_p_ignore)
        return dict(n=(c.n_min, c.n_max), p_ignore=c.p_ignore)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        n = rng.randint(*p["n"])
        p_ignore = p["p_ignore"]
        p_write = p_ignore + (1.0 - p_ignore) / 2.0  # u < p_ignore: ignore; < p_write: write
        tokens: list[str] = [rng.choice(WRITES)]
        for _ in range(n - 2):
            u = rng.random()
            if u < p_ignore:
                tokens.append(rng.choice(IGNORES))
            elif u < p_write:
                tokens.append(rng.choice(WRITES))
            else:
                tokens.append(READ)
        tokens.append(READ)

        target: list[str | None] = [None] * n
        complexity: list[int | None] = [None] * n
        ignores_between: list[int | None] = [None] * n
        reads_between: list[int | None] = [None] * n
        writes_before: list[int | None] = [None] * n
        bit, ign, rd, writes = "0", 0, 0, 0
        for i, tok in enumerate(tokens):
            if tok[0] == "w":
                bit, ign, rd, writes = tok[1], 0, 0, writes + 1
                continue
            if tok == READ:
                target[i], complexity[i] = bit, ign + rd
                ignores_between[i], reads_between[i], writes_before[i] = ign, rd, writes
                rd += 1
            else:
                ign += 1
        since_write = [None if c is None else c + 1 for c in complexity]
        features = {"position": list(range(n)), "n": [n] * n, "since_write": since_write,
                    "ignores_between": ignores_between,
                    "reads_between": reads_between, "writes_before": writes_before}
        return Draft(tokens, target, complexity, features,
                     {"n": n, "p_ignore": p_ignore, "reads": tokens.count(READ)})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        for i, tok in enumerate(input):
            if tok != READ:
                continue
            # Look back from the read to the nearest write.
            j = i - 1
            while j >= 0 and input[j] not in WRITES:
                j -= 1
            if j < 0:
                raise ConfigError(f"flipflop: read at {i} has no earlier write")
            target[i] = input[j][-1]
            complexity[i] = i - j - 1
        return target, complexity

    def train_labels(self) -> frozenset[str]:
        return frozenset(("0", "1"))

    def tokens(self) -> list[str]:
        return [*WRITES, *IGNORES, READ, "0", "1"]
