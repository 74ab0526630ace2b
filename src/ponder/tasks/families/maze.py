"""maze: mark the shortest path from S to G in a random perfect maze.

A maze of n×n rooms is a grid of (2n−1)×(2n−1) tiles: rooms at even (row, column), walls
``#`` at odd-odd tiles, and between two neighbouring rooms a tile that is open ``.`` when a
passage joins them, else ``#``. The passages form a random spanning tree of the rooms
(randomised depth-first carving), so the maze is *perfect*: exactly one path joins any two
tiles, and the shortest path is unique. Two distinct rooms are marked ``S`` (start) and
``G`` (goal). Input: the tiles row by row, each row followed by ``|``. Target at every open
tile ``.``: ``1`` if it lies on the S→G path, else ``0`` (walls, S, G and ``|`` are not
scored). Complexity: the tile's BFS distance from S (in tile moves).

Train/valid/test draw n in [n_min, n_max]; ood draws bigger mazes, n in [ood_n_min,
ood_n_max] (longer rows and longer distances). The verifier parses the grid, runs BFS from S
and from G, puts a tile on the path iff its two distances add up to the S–G distance, and
checks that exactly one shortest path exists. Features: ``position``, ``n`` (the example's
size), ``row``, ``col``, ``dist_goal`` (BFS distance to G), ``path_length`` (S–G distance).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

WALL, OPEN, START, GOAL, EOL = "#", ".", "S", "G", "|"
ON, OFF = "1", "0"


@dataclass(frozen=True)
class MazeConfig:
    n_min: int = knob(3, 2, 32, "fewest rooms per side (train/valid/test)")
    n_max: int = knob(5, 2, 32, "most rooms per side (train/valid/test)")
    ood_n_min: int = knob(6, 2, 32, "fewest rooms per side (ood): must exceed n_max")
    ood_n_max: int = knob(7, 2, 32, "most rooms per side (ood)")


def _carve(rng: random.Random, n: int) -> list[list[str]]:
    """A perfect maze as a (2n−1)² tile grid: randomised depth-first carving from a random room."""
    side = 2 * n - 1
    grid = [[WALL] * side for _ in range(side)]
    start = (rng.randrange(n), rng.randrange(n))
    seen = {start}
    stack = [start]
    grid[2 * start[0]][2 * start[1]] = OPEN
    while stack:
        r, c = stack[-1]
        nxt = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
               if 0 <= r + dr < n and 0 <= c + dc < n and (r + dr, c + dc) not in seen]
        if not nxt:
            stack.pop()
            continue
        nr, nc = rng.choice(nxt)
        grid[r + nr][c + nc] = OPEN          # the tile between (2r, 2c) and (2nr, 2nc)
        grid[2 * nr][2 * nc] = OPEN
        seen.add((nr, nc))
        stack.append((nr, nc))
    return grid


def _tree_paths(grid: list[list[str]], src: tuple[int, int]) -> dict[tuple[int, int], tuple]:
    """Every open tile → (depth, parent) in the maze's tree rooted at ``src`` (depth-first:
    in a tree the depth is the distance)."""
    side = len(grid)
    info: dict[tuple[int, int], tuple] = {src: (0, None)}
    stack = [src]
    while stack:
        r, c = stack.pop()
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            q = (r + dr, c + dc)
            if 0 <= q[0] < side and 0 <= q[1] < side and grid[q[0]][q[1]] != WALL and q not in info:
                info[q] = (info[r, c][0] + 1, (r, c))
                stack.append(q)
    return info


@register
class Maze(Task):
    name = "maze"
    causal = False
    complexity_doc = "BFS distance of the open tile from S (tile moves)"
    # BFS state when the tile is reached: the frontier it belongs to and the tiles settled
    # before it; the distance to G decides the answer (with the path length): a label column
    execution_features = ("frontier", "settled_before")
    label_features = ("dist_goal",)
    Config = MazeConfig
    size_knobs = {"n": ("n_min", "n_max")}
    presets = {
        "small": dict(n_min=3, n_max=5, ood_n_min=6, ood_n_max=7),
        "large": dict(n_min=6, n_max=10, ood_n_min=12, ood_n_max=15),
    }

    def check(self) -> None:
        c = self.config
        if c.n_min > c.n_max or c.ood_n_min > c.ood_n_max:
            raise ConfigError("maze: n_min must be <= n_max (and ood_n_min <= ood_n_max)")
        if c.ood_n_min <= c.n_max:
            raise ConfigError("maze: ood_n_min must lie strictly beyond n_max")

    def split_params(self, split: str) -> dict:
        c = self.config
        return dict(n=(c.ood_n_min, c.ood_n_max) if split == "ood" else (c.n_min, c.n_max))

    def sample(self, rng: random.Random, split: str) -> Draft:
        n = rng.randint(*self.split_params(split)["n"])
        grid = _carve(rng, n)
        a, b = rng.sample(range(n * n), 2)
        s, g = (2 * (a // n), 2 * (a % n)), (2 * (b // n), 2 * (b % n))
        from_s = _tree_paths(grid, s)
        from_g = _tree_paths(grid, g)
        on_path = set()
        q = g
        while q is not None:
            on_path.add(q)
            q = from_s[q][1]
        grid[s[0]][s[1]], grid[g[0]][g[1]] = START, GOAL

        side = 2 * n - 1
        tokens: list[str] = []
        target: list[str | None] = []
        complexity: list[int | None] = []
        rows: list[int | None] = []
        cols: list[int | None] = []
        to_goal: list[int | None] = []
        for r in range(side):
            for c in range(side):
                tok = grid[r][c]
                tokens.append(tok)
                rows.append(r)
                cols.append(c)
                scored = tok == OPEN
                target.append((ON if (r, c) in on_path else OFF) if scored else None)
                complexity.append(from_s[r, c][0] if scored else None)
                to_goal.append(from_g[r, c][0] if tok != WALL else None)
            tokens.append(EOL)
            target.append(None)
            complexity.append(None)
            rows.append(None)
            cols.append(None)
            to_goal.append(None)
        L = len(tokens)
        length = from_s[g][0]
        at_distance: dict[int, int] = {}  # open tiles per BFS distance from S
        for d in complexity:
            if d is not None:
                at_distance[d] = at_distance.get(d, 0) + 1
        frontier = [None if d is None else at_distance[d] for d in complexity]
        settled = [None if d is None else sum(k for e, k in at_distance.items() if e < d)
                   for d in complexity]
        features = {"position": list(range(L)), "n": [n] * L, "row": rows, "col": cols,
                    "dist_goal": to_goal, "path_length": [length] * L,
                    "frontier": frontier, "settled_before": settled}
        return Draft(tokens, target, complexity, features, {"n": n, "path_length": length})

    # ---- the verifier ------------------------------------------------------------------
    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        rows: list[list[str]] = [[]]
        for tok in input:
            if tok == EOL:
                rows.append([])
            elif tok in (WALL, OPEN, START, GOAL):
                rows[-1].append(tok)
            else:
                raise ConfigError(f"maze: unknown tile {tok!r}")
        if rows[-1] or len(rows) < 2:
            raise ConfigError("maze: every row must end with |")
        rows.pop()
        side = len(rows[0])
        if any(len(row) != side for row in rows):
            raise ConfigError("maze: rows of unequal length")
        tiles = [(r, c, t) for r, row in enumerate(rows) for c, t in enumerate(row)]
        ends = {t: [(r, c) for r, c, x in tiles if x == t] for t in (START, GOAL)}
        if len(ends[START]) != 1 or len(ends[GOAL]) != 1:
            raise ConfigError("maze: needs exactly one S and one G")

        def bfs(src: tuple[int, int]) -> tuple[dict, dict]:
            """Distances and number of shortest paths from src over non-wall tiles."""
            dist, ways = {src: 0}, {src: 1}
            queue = deque([src])
            while queue:
                r, c = queue.popleft()
                for q in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if not (0 <= q[0] < len(rows) and 0 <= q[1] < side) or rows[q[0]][q[1]] == WALL:
                        continue
                    if q not in dist:
                        dist[q], ways[q] = dist[r, c] + 1, 0
                        queue.append(q)
                    if dist[q] == dist[r, c] + 1:
                        ways[q] += ways[r, c]
            return dist, ways

        s, g = ends[START][0], ends[GOAL][0]
        ds, ways = bfs(s)
        dg, _ = bfs(g)
        if g not in ds:
            raise ConfigError("maze: G is not reachable from S")
        if ways[g] != 1:
            raise ConfigError(f"maze: {ways[g]} shortest paths from S to G, not one")
        target: list[str | None] = []
        complexity: list[int | None] = []
        r = c = 0
        for tok in input:
            if tok == EOL:
                r, c = r + 1, 0
                target.append(None)
                complexity.append(None)
                continue
            scored = tok == OPEN and (r, c) in ds
            if tok == OPEN and not scored:
                raise ConfigError(f"maze: open tile ({r}, {c}) is not reachable from S")
            target.append((ON if ds[r, c] + dg[r, c] == ds[g] else OFF) if scored else None)
            complexity.append(ds[r, c] if scored else None)
            c += 1
        return target, complexity

    def tokens(self) -> list[str]:
        return [WALL, OPEN, START, GOAL, EOL, ON, OFF]

    def train_labels(self) -> frozenset[str]:
        """Exact: the two labels (on the path or not) both occur in training."""
        return frozenset({ON, OFF})
