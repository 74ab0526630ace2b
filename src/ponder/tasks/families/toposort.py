"""toposort: the order in which Kahn's algorithm (smallest id first) lists a random DAG.

Input: the DAG's edges as ``u>v`` tokens (shuffled), then n answer slots ``_``; the nodes
are ``0..n-1`` (n = the number of slots; a node may have no edge). Target at slot t: the
t-th node Kahn's algorithm outputs when it always takes the smallest available id (a unique
answer). Complexity: ``dfs_depth`` of the picked node, the longest path (in edges) from any
source to it. Features per slot: ``frontier_size`` (available nodes before the pick),
``newly_enabled`` (nodes the previous pick made available; 0 at the first slot),
``dfs_depth``, ``step`` (t); the first three are Kahn's execution state, ``step`` a static
cue. Static features (every position) and params: ``n``,
``edges`` (edge count), ``hub_degree`` (largest in+out degree).

The DAG: a hidden random order of the nodes, and each pair that order puts first→second
gets the edge with probability p (so ids carry no information about the order).
Train/valid/test draw n in [n_min, n_max]; ood draws n in [ood_n_min, ood_n_max] (more
nodes). Ids >= n_max never occur in training: feature ``unseen_label`` is 1 at slots whose
answer is such an id, else 0.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

SLOT = "_"


@dataclass(frozen=True)
class ToposortConfig:
    n_min: int = knob(4, 1, 256, "fewest nodes (train/valid/test)")
    n_max: int = knob(8, 1, 256, "most nodes (train/valid/test)")
    p: float = knob(0.4, 0.0, 1.0, "probability of each edge allowed by the hidden order")
    ood_n_min: int = knob(10, 1, 256, "fewest nodes (ood): must exceed n_max")
    ood_n_max: int = knob(12, 1, 256, "most nodes (ood)")
    ood_p: float = knob(0.4, 0.0, 1.0, "edge probability (ood)")


@register
class Toposort(Task):
    name = "toposort"
    causal = False
    complexity_doc = "dfs_depth: longest path from any source to the picked node"
    Config = ToposortConfig
    size_knobs = {"n": ("n_min", "n_max")}
    execution_features = ("frontier_size", "newly_enabled", "dfs_depth")
    label_features = ("unseen_label",)
    presets = {
        "small": dict(n_min=4, n_max=8, p=0.4, ood_n_min=10, ood_n_max=12, ood_p=0.4),
        "large": dict(n_min=8, n_max=16, p=0.2, ood_n_min=20, ood_n_max=32, ood_p=0.2),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("toposort: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.ood_n_min <= c.n_max:
            raise ConfigError("toposort: ood_n_min must lie strictly beyond n_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(c.ood_n_min, c.ood_n_max), p=c.ood_p)
        return dict(n=(c.n_min, c.n_max), p=c.p)

    def sample(self, rng: random.Random, split: str) -> Draft:
        sp = self.split_params(split)
        n = rng.randint(*sp["n"])
        p = sp["p"]
        hidden = list(range(n))
        rng.shuffle(hidden)
        succ: list[list[int]] = [[] for _ in range(n)]
        indeg = [0] * n
        edge_tokens: list[str] = []
        for i in range(n):
            u = hidden[i]
            for j in range(i + 1, n):
                if rng.random() < p:
                    v = hidden[j]
                    succ[u].append(v)
                    indeg[v] += 1
                    edge_tokens.append(f"{u}>{v}")
        rng.shuffle(edge_tokens)
        m = len(edge_tokens)
        hub = max(len(succ[u]) + indeg[u] for u in range(n))

        # Kahn's algorithm with a min-heap; depth[v] is final once v becomes available.
        remaining = indeg[:]
        depth = [0] * n
        heap = [u for u in range(n) if remaining[u] == 0]
        heapq.heapify(heap)
        order: list[int] = []
        frontier: list[int] = []
        newly: list[int] = []
        enabled = 0
        while heap:
            frontier.append(len(heap))
            newly.append(enabled)
            u = heapq.heappop(heap)
            order.append(u)
            enabled = 0
            for v in succ[u]:
                depth[v] = max(depth[v], depth[u] + 1)
                remaining[v] -= 1
                if remaining[v] == 0:
                    heapq.heappush(heap, v)
                    enabled += 1

        length = m + n
        pad: list = [None] * m
        dfs = [depth[u] for u in order]
        features = {"position": list(range(length)), "n": [n] * length, "edges": [m] * length,
                    "hub_degree": [hub] * length, "frontier_size": pad + frontier,
                    "newly_enabled": pad + newly, "dfs_depth": pad + dfs,
                    "step": pad + list(range(n)),
                    "unseen_label": pad + [int(u >= self.config.n_max) for u in order]}
        return Draft(edge_tokens + [SLOT] * n, pad + [str(u) for u in order], pad + dfs, features,
                     {"n": n, "p": p, "edges": m, "hub_degree": hub})

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        n = input.count(SLOT)
        preds: list[set[int]] = [set() for _ in range(n)]
        for tok in input:
            if ">" in tok:
                u, v = map(int, tok.split(">"))
                preds[v].add(u)
        # Longest path from a source, by memoised recursion over predecessors.
        memo: dict[int, int] = {}

        def longest(v: int) -> int:
            if v not in memo:
                memo[v] = max((longest(u) + 1 for u in preds[v]), default=0)
            return memo[v]

        # Naive Kahn: each step rescans all ids for the smallest one whose preds are placed.
        placed: set[int] = set()
        picks: list[int] = []
        for _ in range(n):
            pick = next(v for v in range(n) if v not in placed and preds[v] <= placed)
            placed.add(pick)
            picks.append(pick)
        first = len(input) - n
        target: list[str | None] = [None] * first + [str(v) for v in picks]
        complexity: list[int | None] = [None] * first + [longest(v) for v in picks]
        return target, complexity

    def train_labels(self) -> frozenset[str]:
        """Exact: every train node id is below n_max, and every node is listed."""
        return frozenset(str(u) for u in range(self.config.n_max))

    def tokens(self) -> list[str]:
        N = max(self.config.n_max, self.config.ood_n_max)
        out = [SLOT] + [str(u) for u in range(N)]
        out += [f"{u}>{v}" for u in range(N) for v in range(N) if u != v]
        return out
