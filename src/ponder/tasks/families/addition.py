"""addition: add two n-digit numbers, one answer digit per slot, with the carry chain as complexity.

Input: ``a + b =`` then n+1 slots ``_``; a and b have exactly n digits in base B (leading
zeros allowed), most significant digit first. Target at slot j: digit j of a+b written with
n+1 digits (most significant first, leading zero allowed). Complexity of a digit: the length
of the carry chain that ends in it: 0 when no carry comes in, else the number of lower
positions the carry travelled through (the generating position plus every position that
propagated it). Features: ``carry_in`` (0/1), ``chain_length`` (= complexity), ``place``
(the digit's place value exponent), ``position``, ``n``. Execution state (for the
decision-timing probe): ``carry_in`` and ``chain_length``; the rest are static cues. Ood: more digits. The default is
base 2, where carries propagate with probability 1/2 and chains are long; preset
``decimal`` is base 10.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register
from ponder.tasks.vocab import SLOT

DIGITS = "0123456789"


@dataclass(frozen=True)
class AdditionConfig:
    base: int = knob(2, choices=(2, 10), help="number base (2 or 10)")
    n_min: int = knob(3, 1, 512, "fewest digits per operand (train/valid/test)")
    n_max: int = knob(8, 1, 512, "most digits per operand (train/valid/test)")
    ood_n_min: int = knob(10, 1, 512, "fewest digits (ood): must exceed n_max")
    ood_n_max: int = knob(16, 1, 512, "most digits (ood)")


@register
class Addition(Task):
    name = "addition"
    causal = False
    complexity_doc = "length of the carry chain ending in the digit (0 = no carry in)"
    Config = AdditionConfig
    size_knobs = {"n": ("n_min", "n_max")}
    execution_features = ("carry_in", "chain_length")
    presets = {
        "small": dict(base=2, n_min=3, n_max=8, ood_n_min=10, ood_n_max=16),
        "decimal": dict(base=10, n_min=3, n_max=8, ood_n_min=10, ood_n_max=16),
        "long": dict(base=10, n_min=1, n_max=20, ood_n_min=21, ood_n_max=40),
        "binary_long": dict(base=2, n_min=8, n_max=32, ood_n_min=40, ood_n_max=64),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("addition: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.ood_n_min <= c.n_max:
            raise ConfigError("addition: ood_n_min must lie strictly beyond n_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(c.ood_n_min, c.ood_n_max), base=c.base)
        return dict(n=(c.n_min, c.n_max), base=c.base)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        base = p["base"]
        n = rng.randint(*p["n"])
        a = [rng.randrange(base) for _ in range(n)]  # most significant first
        b = [rng.randrange(base) for _ in range(n)]
        value = int("".join(DIGITS[d] for d in a), base) + int("".join(DIGITS[d] for d in b), base)
        # Digit sums by place (place 0 = least significant); a carry into place q exists iff
        # the low q places overflow, and then it was generated at the highest lower place whose
        # digit sum reaches the base (every place in between summed to base-1 and passed it on).
        sums = [a[n - 1 - q] + b[n - 1 - q] for q in range(n)]
        low_a = low_b = 0
        answer, chain, carry = [], [], []
        for q in range(n + 1):
            answer.append(DIGITS[(value // base**q) % base])
            if q == 0:
                cin = 0
            else:
                low_a += a[n - q] * base ** (q - 1)
                low_b += b[n - q] * base ** (q - 1)
                cin = int(low_a + low_b >= base**q)
            carry.append(cin)
            if cin:
                gen = max(g for g in range(q) if sums[g] >= base)
                chain.append(q - gen)
            else:
                chain.append(0)
        answer.reverse()
        chain.reverse()
        carry.reverse()
        tokens = [DIGITS[d] for d in a] + ["+"] + [DIGITS[d] for d in b] + ["="] + [SLOT] * (n + 1)
        head = 2 * n + 2
        L = len(tokens)
        none = [None] * head
        features = {
            "position": list(range(L)),
            "n": [n] * L,
            "carry_in": none + carry,
            "chain_length": none + chain,
            "place": none + list(range(n, -1, -1)),
        }
        return Draft(tokens, none + answer, none + chain, features, {"n": n, "base": base})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        base = self.config.base
        plus, eq = input.index("+"), input.index("=")
        a = [int(t) for t in input[:plus]]
        b = [int(t) for t in input[plus + 1:eq]]
        slots = len(input) - eq - 1
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        # Schoolbook, right to left, walking the carry and how far it has come.
        carry, chain = 0, 0
        i, j = len(a) - 1, len(b) - 1
        for k in range(slots):
            pos = len(input) - 1 - k
            da = a[i] if i >= 0 else 0
            db = b[j] if j >= 0 else 0
            total = da + db + carry
            target[pos] = str(total % base)
            complexity[pos] = chain if carry else 0
            new_carry = 1 if total >= base else 0
            if new_carry and da + db >= base:
                chain = 1          # a fresh carry starts here
            elif new_carry:
                chain = chain + 1  # the incoming carry passes through this place
            else:
                chain = 0
            carry = new_carry
            i, j = i - 1, j - 1
        return target, complexity

    def tokens(self) -> list[str]:
        return list(DIGITS[: self.config.base]) + ["+", "=", SLOT]
