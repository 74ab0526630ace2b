"""graph_distance: BFS distance of every node from a marked source in a random graph.

Input: ``src:s``, then the undirected edges as ``a-b`` tokens (a < b, shuffled), then one
token ``n:u`` per node in increasing label order. Node labels are n distinct numbers drawn
from ``0..labels-1`` (the same label space in every split, so ood inputs reuse train's
tokens). Target at each node token: the BFS distance from s as a number token, or ``inf``
when the node is unreachable. Complexity: the distance; for an unreachable node, the number
of BFS rounds that prove it unreachable, i.e. (largest finite distance from s) + 1.

Edges: the edge count m ~ Binomial(n(n-1)/2, p); with ``hubs`` = 0 the m edges are uniform
(Erdős–Rényi); with ``hubs`` > 0 each edge gets one uniform endpoint and one endpoint that,
with probability ``hubs``, is picked in proportion to degree (preferential attachment: hubs).

Train/valid/test draw n in [n_min, n_max] with probability p and keep only graphs whose
finite distances are all <= ``max_dist``; ood draws n in [ood_n_min, ood_n_max] with
``ood_p`` and keeps only graphs with some node farther than ``max_dist`` (longer paths).
So the answer labels ``max_dist+1 ...`` never occur in training: feature ``unseen_label``
is 1 exactly at those scored tokens (0 at other scored tokens).
Static features: ``position``, ``n`` (size), ``edges`` (m), ``hub_degree`` (largest
degree), ``degree`` (of the node, at node tokens). Execution state of BFS at the round that
settles the node: ``frontier`` (the nodes settled in that round, the node included: the
BFS frontier of its distance) and ``settled_before`` (nodes settled in earlier rounds); for
an unreachable node, the round that proves it (an empty frontier: 0, everything reachable
settled before). Label features (not predictors in the probes): ``reachable``,
``unseen_label``.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

INF = "inf"
MAX_TRIES = 1000  # graphs drawn before giving up on the distance constraint


@dataclass(frozen=True)
class GraphDistanceConfig:
    n_min: int = knob(6, 2, 512, "fewest nodes (train/valid/test)")
    n_max: int = knob(10, 2, 512, "most nodes (train/valid/test)")
    p: float = knob(0.3, 0.0, 1.0, "edge probability (train/valid/test)")
    hubs: float = knob(0.0, 0.0, 1.0, "preferential attachment: 0 uniform, 1 strongly hubbed")
    max_dist: int = knob(4, 1, 511, "largest finite distance in train (ood goes beyond)")
    ood_n_min: int = knob(12, 2, 512, "fewest nodes (ood)")
    ood_n_max: int = knob(16, 2, 512, "most nodes (ood)")
    ood_p: float = knob(0.15, 0.0, 1.0, "edge probability (ood)")
    labels: int = knob(16, 2, 512, "size of the node label space (>= ood_n_max)")


@register
class GraphDistance(Task):
    name = "graph_distance"
    causal = False
    complexity_doc = "BFS distance from the source (unreachable: largest finite distance + 1)"
    Config = GraphDistanceConfig
    size_knobs = {"n": ("n_min", "n_max")}
    execution_features = ("frontier", "settled_before")
    label_features = ("reachable", "unseen_label")
    presets = {
        "small": dict(n_min=6, n_max=10, p=0.3, hubs=0.0, max_dist=4, ood_n_min=12,
                      ood_n_max=16, ood_p=0.15, labels=16),
        "hubs": dict(n_min=6, n_max=10, p=0.3, hubs=0.8, max_dist=4, ood_n_min=12,
                     ood_n_max=16, ood_p=0.15, labels=16),
        "large": dict(n_min=16, n_max=32, p=0.1, hubs=0.0, max_dist=8, ood_n_min=40,
                      ood_n_max=64, ood_p=0.05, labels=64),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("graph_distance: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.labels < max(c.n_max, c.ood_n_max):
            raise ConfigError("graph_distance: labels must be >= n_max and ood_n_max")
        if c.ood_n_min <= c.n_max:
            raise ConfigError("graph_distance: ood_n_min must lie strictly beyond n_max")
        if c.ood_n_max <= c.max_dist + 1:
            raise ConfigError("graph_distance: ood graphs need more than max_dist + 1 nodes "
                              "to hold a path longer than max_dist")

    def split_params(self, split: str) -> dict:
        c = self.config
        if split == "ood":
            return dict(n=(max(c.ood_n_min, c.max_dist + 2), c.ood_n_max), p=c.ood_p,
                        hubs=c.hubs, longer_than=c.max_dist)
        return dict(n=(c.n_min, c.n_max), p=c.p, hubs=c.hubs, at_most=c.max_dist)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        for _ in range(MAX_TRIES):
            n = rng.randint(*p["n"])
            edges = _random_edges(rng, n, p["p"], p["hubs"])
            src = rng.randrange(n)
            dist = _bfs(n, edges, src)
            far = max(d for d in dist if d is not None)
            if "at_most" in p and far <= p["at_most"]:
                break
            if "longer_than" in p and far > p["longer_than"]:
                break
        else:
            raise ConfigError(f"graph_distance: no {split} graph met the distance bound in "
                              f"{MAX_TRIES} draws; change p/ood_p or max_dist")

        label = rng.sample(range(self.config.labels), n)
        edge_tokens = [f"{min(label[a], label[b])}-{max(label[a], label[b])}" for a, b in edges]
        rng.shuffle(edge_tokens)
        degree = [0] * n
        for a, b in edges:
            degree[a] += 1
            degree[b] += 1
        order = sorted(range(n), key=label.__getitem__)
        head = 1 + len(edges)
        length = head + n
        tokens = [f"src:{label[src]}"] + edge_tokens + [f"n:{label[u]}" for u in order]
        target: list[str | None] = [None] * head
        complexity: list[int | None] = [None] * head
        deg: list[int | None] = [None] * head
        reach: list[int | None] = [None] * head
        unseen: list[int | None] = [None] * head
        frontier: list[int | None] = [None] * head
        settled: list[int | None] = [None] * head
        at = [0] * (far + 2)   # nodes per BFS round; round far+1 (unreachable) stays empty
        for d in dist:
            if d is not None:
                at[d] += 1
        for u in order:
            d = dist[u]
            target.append(INF if d is None else str(d))
            complexity.append(far + 1 if d is None else d)
            deg.append(degree[u])
            reach.append(int(d is not None))
            unseen.append(int(d is not None and d > self.config.max_dist))
            r = far + 1 if d is None else d
            frontier.append(at[r])
            settled.append(sum(at[:r]))
        hub = max(degree)
        features = {"position": list(range(length)), "n": [n] * length,
                    "edges": [len(edges)] * length, "hub_degree": [hub] * length,
                    "degree": deg, "frontier": frontier, "settled_before": settled,
                    "reachable": reach, "unseen_label": unseen}
        params = {"n": n, "p": p["p"], "hubs": p["hubs"], "edges": len(edges),
                  "hub_degree": hub, "eccentricity": far}
        return Draft(tokens, target, complexity, features, params)

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        src = input[0].split(":")[1]
        pairs = [tok.split("-") for tok in input if "-" in tok]
        # Bellman-Ford style relaxation over the edge list until nothing changes.
        dist: dict[str, int] = {src: 0}
        changed = True
        while changed:
            changed = False
            for a, b in pairs:
                for x, y in ((a, b), (b, a)):
                    if x in dist and (y not in dist or dist[x] + 1 < dist[y]):
                        dist[y] = dist[x] + 1
                        changed = True
        far = max(dist.values())
        target: list[str | None] = [None] * len(input)
        complexity: list[int | None] = [None] * len(input)
        for i, tok in enumerate(input):
            if tok.startswith("n:"):
                u = tok[2:]
                target[i] = str(dist[u]) if u in dist else INF
                complexity[i] = dist[u] if u in dist else far + 1
        return target, complexity

    def train_labels(self) -> frozenset[str]:
        """Exact: train keeps only graphs whose finite distances are <= max_dist (< n_max)."""
        c = self.config
        labels = {str(d) for d in range(min(c.max_dist, c.n_max - 1) + 1)}
        return frozenset(labels | ({INF} if c.p < 1.0 else set()))

    def tokens(self) -> list[str]:
        L = self.config.labels
        out = [INF] + [str(d) for d in range(L)]
        out += [f"src:{u}" for u in range(L)] + [f"n:{u}" for u in range(L)]
        out += [f"{a}-{b}" for a in range(L) for b in range(a + 1, L)]
        return out


def _random_edges(rng: random.Random, n: int, p: float, hubs: float) -> list[tuple[int, int]]:
    """Undirected simple edges (a < b) on nodes 0..n-1; see the module docstring."""
    pairs = n * (n - 1) // 2
    m = sum(1 for _ in range(pairs) if rng.random() < p)
    if hubs == 0.0:
        chosen = rng.sample(range(pairs), m)
        edges = []
        for code in chosen:  # decode a pair index into (a, b), a < b
            a = 0
            while code >= n - 1 - a:
                code -= n - 1 - a
                a += 1
            edges.append((a, a + 1 + code))
        return edges
    edges_set: set[tuple[int, int]] = set()
    ends: list[int] = []  # every edge endpoint once: sampling from it is degree-proportional
    tries = 0
    while len(edges_set) < m and tries < 50 * (m + 1):
        tries += 1
        a = rng.randrange(n)
        b = rng.choice(ends) if ends and rng.random() < hubs else rng.randrange(n)
        e = (min(a, b), max(a, b))
        if a == b or e in edges_set:
            continue
        edges_set.add(e)
        ends += e
    return sorted(edges_set)


def _bfs(n: int, edges: list[tuple[int, int]], src: int) -> list[int | None]:
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    dist: list[int | None] = [None] * n
    dist[src] = 0
    queue = deque([src])
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if dist[v] is None:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist
