"""list_rank (pointer chasing): each node's distance from the head of a shuffled linked list.

A linked list of m nodes with random distinct labels (drawn from a fixed set of
``n_labels`` labels ``0 .. n_labels-1``, large enough for ood). Input: ``head:x`` first,
then the m edge tokens ``x>y`` in shuffled order, one per node: node x points to node y,
and the last node points to ``end`` (``x>end``). Target at every edge token: the distance of
its source node x from the head, as a number token ``0 .. m-1``. Complexity: that distance
(hard and easy tokens side by side in one sequence). Static features: ``position``, ``m``
(the example's size), ``is_last`` (the edge to ``end``), ``is_first`` (the edge leaving the
head node, which ``head:x`` names). Execution state: ``hops_to_head`` (the hops a walk back
from the node must resolve before its rank is known: the distance), ``hops_to_end`` (the
hops to ``end``: the rank is also m-1 minus that), ``doubling_rounds`` (rounds of pointer
jumping until the node's pointer reaches the head: ceil(log2(distance+1))). Label
feature: ``unseen_label`` (1 where the distance is >= m_max, a label that never occurs in
train; not a predictor in the probes). Train/valid/test draw m in
[m_min, m_max]; ood draws longer lists, m in [ood_m_min, ood_m_max], so ood has distances
never seen in training: :meth:`ListRank.train_labels` gives the exact train label set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

END = "end"


@dataclass(frozen=True)
class ListRankConfig:
    m_min: int = knob(4, 2, 512, "fewest nodes (train/valid/test)")
    m_max: int = knob(10, 2, 512, "most nodes (train/valid/test)")
    ood_m_min: int = knob(12, 2, 512, "fewest nodes (ood): must exceed m_max")
    ood_m_max: int = knob(16, 2, 512, "most nodes (ood)")
    n_labels: int = knob(20, 2, 512, "size of the fixed label set (>= ood_m_max)")


@register
class ListRank(Task):
    name = "list_rank"
    causal = False
    complexity_doc = "distance of the edge's source node from the head (0..m-1)"
    Config = ListRankConfig
    size_knobs = {"m": ("m_min", "m_max")}
    execution_features = ("hops_to_head", "hops_to_end", "doubling_rounds")
    label_features = ("unseen_label",)
    presets = {
        "small": dict(m_min=4, m_max=10, ood_m_min=12, ood_m_max=16, n_labels=20),
        "long": dict(m_min=8, m_max=32, ood_m_min=40, ood_m_max=64, n_labels=64),
    }

    def check(self) -> None:
        c = self.config
        if c.m_min > c.m_max or c.ood_m_min > c.ood_m_max:
            raise ConfigError("list_rank: m_min must be <= m_max (and ood_m_min <= ood_m_max)")
        if c.ood_m_min <= c.m_max:
            raise ConfigError("list_rank: ood_m_min must lie strictly beyond m_max")
        if c.n_labels < max(c.m_max, c.ood_m_max):
            raise ConfigError("list_rank: n_labels must be >= ood_m_max (one label per node)")

    def split_params(self, split: str) -> dict:
        c = self.config
        m = (c.ood_m_min, c.ood_m_max) if split == "ood" else (c.m_min, c.m_max)
        return dict(m=m, n_labels=c.n_labels)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        m = rng.randint(*p["m"])
        order = rng.sample(range(p["n_labels"]), m)  # order[d] is the node at distance d
        edges = [(d, f"{order[d]}>{order[d + 1] if d + 1 < m else END}") for d in range(m)]
        rng.shuffle(edges)
        tokens = [f"head:{order[0]}"] + [tok for _, tok in edges]
        target: list[str | None] = [None] + [str(d) for d, _ in edges]
        complexity: list[int | None] = [None] + [d for d, _ in edges]
        m_max = self.config.m_max
        features = {"position": list(range(m + 1)), "m": [m] * (m + 1),
                    "is_last": [None] + [int(d == m - 1) for d, _ in edges],
                    "is_first": [None] + [int(d == 0) for d, _ in edges],
                    "hops_to_head": [None] + [d for d, _ in edges],
                    "hops_to_end": [None] + [m - 1 - d for d, _ in edges],
                    "doubling_rounds": [None] + [d.bit_length() for d, _ in edges],
                    "unseen_label": [None] + [int(d >= m_max) for d, _ in edges]}
        return Draft(tokens, target, complexity, features, {"m": m})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        head = input[0].split(":", 1)[1]
        succ = {}
        for tok in input[1:]:
            src, dst = tok.split(">")
            succ[src] = dst
        dist = {}
        node, d = head, 0
        while node != END:
            dist[node] = d
            node, d = succ[node], d + 1
        target: list[str | None] = [None]
        complexity: list[int | None] = [None]
        for tok in input[1:]:
            src = tok.split(">")[0]
            target.append(str(dist[src]))
            complexity.append(dist[src])
        return target, complexity

    def tokens(self) -> list[str]:
        c = self.config
        labels = [str(i) for i in range(c.n_labels)]
        toks = [f"head:{x}" for x in labels] + [f"{x}>{END}" for x in labels]
        toks += [f"{x}>{y}" for x in labels for y in labels if x != y]
        toks += [str(d) for d in range(max(c.m_max, c.ood_m_max))]
        return toks

    def train_labels(self) -> frozenset[str]:
        """Exact: train lists have m <= m_max nodes, so distances 0..m_max-1."""
        return frozenset(str(d) for d in range(self.config.m_max))
