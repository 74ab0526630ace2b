"""copy and reverse: control tasks whose every scored token costs the same (complexity 1).

Input: n symbols, a separator ``|``, then n answer slots ``_``:
``a c b | _ _ _``. Target at slot j: symbol j of the sequence (``copy``) or symbol
n-1-j (``reverse``). Complexity: 1 at every slot, so a policy that spends compute
uniformly shows up as such. Train/valid/test draw n in [n_min, n_max]; ood draws
n in [ood_n_min, ood_n_max], strictly longer. Symbols are the first ``alphabet``
lowercase letters; the alphabet is the same in every split, so ood sees no new labels.
Features: ``position``, ``n`` (size), ``offset`` (how far back the source symbol is).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import ClassVar

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

SEP = "|"
SLOT = "_"


@dataclass(frozen=True)
class SequenceConfig:
    n_min: int = knob(4, 1, 2048, "shortest sequence (train/valid/test)")
    n_max: int = knob(10, 1, 2048, "longest sequence (train/valid/test)")
    ood_n_min: int = knob(12, 1, 2048, "shortest sequence (ood): must exceed n_max")
    ood_n_max: int = knob(16, 1, 2048, "longest sequence (ood)")
    alphabet: int = knob(8, 2, 26, "number of distinct symbols")


class _SequenceTask(Task):
    """Shared generator for copy/reverse; subclasses say where slot j reads from."""

    causal = False
    complexity_doc = "constant 1 (control task)"
    Config = SequenceConfig
    size_knobs = {"n": ("n_min", "n_max")}
    presets: ClassVar[dict] = {
        "small": dict(n_min=4, n_max=10, ood_n_min=12, ood_n_max=16, alphabet=8),
        "long": dict(n_min=16, n_max=40, ood_n_min=41, ood_n_max=80, alphabet=26),
    }

    def source(self, j: int, n: int) -> int:
        raise NotImplementedError

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError(f"{self.name}: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.ood_n_min <= c.n_max:
            raise ConfigError(f"{self.name}: ood_n_min must lie strictly beyond n_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(c.ood_n_min, c.ood_n_max), alphabet=c.alphabet)
        return dict(n=(c.n_min, c.n_max), alphabet=c.alphabet)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        n = rng.randint(*p["n"])
        letters = string.ascii_lowercase[: p["alphabet"]]
        seq = [rng.choice(letters) for _ in range(n)]
        length = 2 * n + 1
        tokens = seq + [SEP] + [SLOT] * n
        srcs = [self.source(j, n) for j in range(n)]
        target: list[str | None] = [None] * (n + 1) + [seq[s] for s in srcs]
        complexity: list[int | None] = [None] * (n + 1) + [1] * n
        offset: list[int | None] = [None] * (n + 1) + [n + 1 + j - s for j, s in enumerate(srcs)]
        features = {"position": list(range(length)), "n": [n] * length, "offset": offset}
        return Draft(tokens, target, complexity, features, {"n": n})

    def train_labels(self) -> frozenset[str]:
        """Exact: every symbol of the alphabet (the alphabet is the same in every split)."""
        return frozenset(string.ascii_lowercase[: self.config.alphabet])

    def tokens(self) -> list[str]:
        return list(string.ascii_lowercase[: self.config.alphabet]) + [SEP, SLOT]


def _split_input(input: list[str]) -> tuple[list[str], int]:
    """The symbols before ``|`` and the index of ``|`` (verifier helper)."""
    if SEP not in input:
        raise ConfigError("input has no separator '|'")
    cut = input.index(SEP)
    return input[:cut], cut


@register
class Copy(_SequenceTask):
    name = "copy"

    def source(self, j: int, n: int) -> int:
        return j

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        symbols, cut = _split_input(input)
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        # Walk the slots and the symbols side by side.
        for k, sym in enumerate(symbols):
            target[cut + 1 + k] = sym
            complexity[cut + 1 + k] = 1
        return target, complexity


@register
class Reverse(_SequenceTask):
    name = "reverse"

    def source(self, j: int, n: int) -> int:
        return n - 1 - j

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        symbols, cut = _split_input(input)
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        # Fill the slots from the far end backwards with the symbols in reading order.
        end = len(input) - 1
        for k, sym in enumerate(symbols):
            target[end - k] = sym
            complexity[end - k] = 1
        return target, complexity
