"""agreement (causal): number agreement across centre-embedded relative clauses.

A sentence of embedding depth d has d object-relative clauses nested in the subject:
``the dog that the cats that the bird sees chase runs .`` Here ``runs`` agrees with
``dog``, ``chase`` with ``cats``, ``sees`` with ``bird``: verbs close the clauses in the
reverse order of their subjects (a stack). Nouns are singular (``dog``) or plural
(``dogs``) at random and may carry an adjective (``the old dogs``).

Formulation (why answer slots): a verb's own token would show its number, so the input
writes each verb as an answer slot ``_`` and the target at that slot is the number the verb
must carry, ``sg`` or ``pl``. Which noun is the subject of the verb at slot i is fixed by
the tokens before i (the structure so far is a stack of open clauses), so the target depends
only on input[0..i]: the task is solvable with a causal mask. Free choices (nouns,
adjectives) are not scored; no end-of-clause tokens are used (the slots end the clauses).

Complexity at a slot: the number of clauses opened between the verb's subject and the verb
(the ``that`` tokens in between): d for the main verb, 0 for the innermost verb.
Features: ``position``, ``n`` (length), ``depth`` (d, the sentence's embedding depth),
``level`` (the verb's clause: 0 = main clause), ``distance`` (tokens from subject to verb).
Train/valid/test draw d in [0, depth_max]; ood draws d in [ood_depth_min, ood_depth_max],
deeper than train. ``nouns`` and ``adjectives`` set the vocabulary size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

NOUNS: tuple[str, ...] = ("dog", "cat", "bird", "horse", "cow", "pig", "goat", "duck", "frog",
                          "rat", "owl", "bee", "ant", "hen", "lamb", "seal", "crab", "yak",
                          "eel", "worm", "bat", "mole", "hawk", "toad")
ADJECTIVES: tuple[str, ...] = ("big", "small", "old", "young", "red", "green", "happy", "sad",
                               "quick", "slow", "tall", "short")
THE, THAT, END, SLOT = "the", "that", ".", "_"
SG, PL = "sg", "pl"


@dataclass(frozen=True)
class AgreementConfig:
    depth_max: int = knob(3, 0, 64, "deepest embedding (train/valid/test)")
    ood_depth_min: int = knob(4, 1, 64, "shallowest embedding (ood): must exceed depth_max")
    ood_depth_max: int = knob(5, 1, 64, "deepest embedding (ood)")
    nouns: int = knob(8, 1, len(NOUNS), "number of noun lemmas")
    adjectives: int = knob(4, 0, len(ADJECTIVES), "number of adjectives")
    p_adjective: float = knob(0.3, 0.0, 1.0, "probability that a noun carries an adjective")


@register
class Agreement(Task):
    name = "agreement"
    causal = True
    complexity_doc = "clauses opened between a verb and its subject"
    Config = AgreementConfig
    execution_features = ("level", "distance")
    presets = {
        "small": dict(depth_max=3, ood_depth_min=4, ood_depth_max=5, nouns=8, adjectives=4,
                      p_adjective=0.3),
        "deep": dict(depth_max=5, ood_depth_min=6, ood_depth_max=8, nouns=24, adjectives=12,
                     p_adjective=0.3),
    }

    def check(self) -> None:
        c = self.config
        if c.ood_depth_min > c.ood_depth_max:
            raise ConfigError("agreement: ood_depth_min must be <= ood_depth_max")
        if c.ood_depth_min <= c.depth_max:
            raise ConfigError("agreement: ood_depth_min must lie strictly beyond depth_max")
        if c.p_adjective > 0 and c.adjectives == 0:
            raise ConfigError("agreement: p_adjective > 0 needs adjectives >= 1")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(depth=(c.ood_depth_min, c.ood_depth_max))
        return dict(depth=(0, c.depth_max))

    def sample(self, rng: random.Random, split: str) -> Draft:
        c = self.config
        d = rng.randint(*self.split_params(split)["depth"])
        tokens: list[str] = []
        subjects: list[tuple[int, bool]] = []  # (position of the noun, plural?) per clause
        for level in range(d + 1):
            if level:
                tokens.append(THAT)
            tokens.append(THE)
            if c.adjectives and rng.random() < c.p_adjective:
                tokens.append(ADJECTIVES[rng.randrange(c.adjectives)])
            plural = rng.random() < 0.5
            noun = NOUNS[rng.randrange(c.nouns)]
            subjects.append((len(tokens), plural))
            tokens.append(noun + "s" if plural else noun)
        head = len(tokens)
        n = head + d + 2  # d+1 verb slots and the full stop
        target: list[str | None] = [None] * n
        complexity: list[int | None] = [None] * n
        level_f: list[int | None] = [None] * n
        distance: list[int | None] = [None] * n
        for k in range(d + 1):  # the k-th verb closes clause d-k
            level = d - k
            pos, plural = subjects[level]
            i = head + k
            target[i] = PL if plural else SG
            complexity[i] = d - level
            level_f[i] = level
            distance[i] = i - pos
        tokens += [SLOT] * (d + 1) + [END]
        features = {"position": list(range(n)), "n": [n] * n, "depth": [d] * n,
                    "level": level_f, "distance": distance}
        return Draft(tokens, target, complexity, features,
                     {"depth": d, "n": n, "plural": [pl for _, pl in subjects]})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        plurals = {w + "s" for w in NOUNS}
        singulars = set(NOUNS)
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        for i, tok in enumerate(input):
            if tok != SLOT:
                continue
            # Scan back: each slot passed owns one noun further back; the first noun not
            # owned by a later verb is this verb's subject.
            owed = 0
            j = i - 1
            while j >= 0:
                w = input[j]
                if w == SLOT:
                    owed += 1
                elif w in plurals or w in singulars:
                    if owed == 0:
                        break
                    owed -= 1
                j -= 1
            if j < 0:
                raise ConfigError(f"agreement: verb slot at {i} has no subject")
            target[i] = PL if input[j] in plurals else SG
            complexity[i] = input[j + 1:i].count(THAT)
        return target, complexity

    def train_labels(self) -> frozenset[str]:
        return frozenset((SG, PL))

    def tokens(self) -> list[str]:
        c = self.config
        nouns = NOUNS[: c.nouns]
        return ([THE, THAT, END, SLOT, SG, PL] + list(nouns) + [w + "s" for w in nouns]
                + list(ADJECTIVES[: c.adjectives]))
