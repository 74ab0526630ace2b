"""sudoku: fill an n×n Sudoku (4×4 or 9×9) that constraint propagation alone solves.

Input: the n² cells row by row, a digit ``1..n`` for a given and ``_`` for a blank (n = 4
with 2×2 boxes, or 9 with 3×3 boxes: knob ``size``). Target at every blank: its digit;
givens are not scored. Complexity of a blank: the **constraint-propagation round** in which
it becomes forced. Round r looks at the grid as filled by rounds < r and forces every blank
that has one candidate left (a naked single; knob ``rule = naked``, the default) or, with
``rule = singles``, also every blank that is the only place for some digit in its row,
column or box (a hidden single); all of round r's cells are filled at once. The puzzle is
kept only when propagation fills every blank, so every scored cell has a round and the
solution is unique (each forced value is a sound deduction). Naked singles alone spread the
rounds further (4×4 at 8 blanks: rounds 1-3; hidden singles force almost every 4×4 blank in
round 1).

Generation: a random solved grid (a base pattern under random digit, row-in-band, band,
column-in-stack and stack permutations and a random transpose), then cells are blanked in a
random order, each kept blank only if propagation still solves the puzzle, until ``holes``
blanks are reached (a fresh order or grid when an order runs out first). Train/valid/test
draw holes in [holes_min, holes_max]; ood draws more blanks, [ood_holes_min, ood_holes_max]
(fewer givens, later rounds). The verifier solves by backtracking (and checks that the
solution is unique) and recomputes the rounds with its own plain propagation.
Features: ``position``, ``holes`` and ``size`` (the example's size), ``rounds`` (the
puzzle's last round), ``row``, ``col``, ``box``, ``candidates`` (candidates of the blank in
the starting grid).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Task, knob
from ponder.tasks.registry import register

BLANK = "_"
RULES = ("naked", "singles")
MAX_ORDERS = 50  # removal orders tried per drawn grid before drawing another grid


# Beyond these, propagation-solvable puzzles get too rare to draw by blanking cells
# (4×4: 12 blanks leave 4 givens, the fewest a unique 4×4 puzzle has).
HOLES_LIMIT = {4: 12, 9: 58}


@dataclass(frozen=True)
class SudokuConfig:
    size: int = knob(4, help="side of the grid: 4 (2×2 boxes) or 9 (3×3 boxes)", choices=(4, 9))
    rule: str = knob("naked", help="what propagation forces: naked singles only | naked and hidden singles",
                     choices=RULES)
    holes_min: int = knob(4, 1, 80, "fewest blanks (train/valid/test)")
    holes_max: int = knob(8, 1, 80, "most blanks (train/valid/test)")
    ood_holes_min: int = knob(9, 1, 80, "fewest blanks (ood): must exceed holes_max")
    ood_holes_max: int = knob(11, 1, 80, "most blanks (ood)")


def _box(n: int) -> int:
    return 3 if n == 9 else 2


@lru_cache(maxsize=None)
def _geometry(n: int) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """(units, peers): the 3n rows/columns/boxes as cell-index tuples, and each cell's peers."""
    b = _box(n)
    rows = [tuple(r * n + c for c in range(n)) for r in range(n)]
    cols = [tuple(r * n + c for r in range(n)) for c in range(n)]
    boxes = [tuple((br * b + i) * n + bc * b + j for i in range(b) for j in range(b))
             for br in range(b) for bc in range(b)]
    units = tuple(rows + cols + boxes)
    peers = tuple(tuple(sorted({p for u in units if cell in u for p in u} - {cell}))
                  for cell in range(n * n))
    return units, peers


def propagation_rounds(grid: list[int], n: int, hidden: bool) -> list[int] | None:
    """The round in which each blank (0) of ``grid`` is forced, 0 at givens; None when
    propagation gets stuck (or meets a contradiction) before the grid is full. ``hidden``
    adds hidden singles to the naked ones.

    Bitmask version used by the generator (the verifier has its own set-based one).
    """
    units, peers = _geometry(n)
    full = (1 << n) - 1
    g = list(grid)
    rounds = [0] * (n * n)
    r = 0
    while True:
        blanks = [i for i in range(n * n) if g[i] == 0]
        if not blanks:
            return rounds
        r += 1
        mask = {}
        for i in blanks:
            used = 0
            for p in peers[i]:
                if g[p]:
                    used |= 1 << (g[p] - 1)
            mask[i] = full & ~used
            if not mask[i]:
                return None
        forced: dict[int, int] = {}
        for i in blanks:
            m = mask[i]
            if m & (m - 1) == 0:
                forced[i] = m.bit_length()
        for u in units if hidden else ():
            for d in range(n):
                bit = 1 << d
                spots = [i for i in u if g[i] == 0 and mask[i] & bit]
                if len(spots) == 1:
                    i = spots[0]
                    if forced.get(i, d + 1) != d + 1:
                        return None
                    forced[i] = d + 1
        if not forced:
            return None
        for i, v in forced.items():
            g[i] = v
            rounds[i] = r


def _solved_grid(rng: random.Random, n: int) -> list[int]:
    b = _box(n)
    digits = rng.sample(range(1, n + 1), n)
    bands = rng.sample(range(b), b)
    stacks = rng.sample(range(b), b)
    rows = [band * b + i for band in bands for i in rng.sample(range(b), b)]
    cols = [stack * b + j for stack in stacks for j in rng.sample(range(b), b)]
    grid = [digits[(b * (r % b) + r // b + c) % n] for r in rows for c in cols]
    if rng.random() < 0.5:
        grid = [grid[c * n + r] for r in range(n) for c in range(n)]
    return grid


@register
class Sudoku(Task):
    name = "sudoku"
    causal = False
    complexity_doc = "constraint-propagation round in which the blank becomes forced (1 = at once)"
    # the propagation's state at a blank before round 1: how many values its row/column/box
    # still allow, and how many of its peers are blank (each forced peer removes a candidate)
    execution_features = ("candidates", "blank_peers")
    Config = SudokuConfig
    size_knobs = {"holes": ("holes_min", "holes_max")}
    presets = {
        "4x4": dict(size=4, rule="naked", holes_min=4, holes_max=8, ood_holes_min=9, ood_holes_max=11),
        "9x9": dict(size=9, rule="naked", holes_min=30, holes_max=45, ood_holes_min=48,
                    ood_holes_max=54),
    }

    def check(self) -> None:
        c = self.config
        if c.holes_min > c.holes_max or c.ood_holes_min > c.ood_holes_max:
            raise ConfigError("sudoku: holes_min must be <= holes_max (and ood_holes_min <= ood_holes_max)")
        if c.ood_holes_min <= c.holes_max:
            raise ConfigError("sudoku: ood_holes_min must lie strictly beyond holes_max")
        limit = HOLES_LIMIT[c.size]
        if c.ood_holes_max > limit:
            raise ConfigError(f"sudoku: ood_holes_max={c.ood_holes_max} exceeds {limit} for size {c.size}")

    def check_size(self, size: str, value: int) -> None:
        if value > HOLES_LIMIT[self.config.size]:
            raise ConfigError(f"sudoku: holes={value} exceeds {HOLES_LIMIT[self.config.size]} "
                              f"for size {self.config.size}")

    def split_params(self, split: str) -> dict:
        c = self.config
        holes = (c.ood_holes_min, c.ood_holes_max) if split == "ood" else (c.holes_min, c.holes_max)
        return dict(holes=holes, size=c.size)

    def sample(self, rng: random.Random, split: str) -> Draft:
        p = self.split_params(split)
        n = p["size"]
        hidden = self.config.rule == "singles"
        h = rng.randint(*p["holes"])
        while True:  # the check() limits keep this loop short
            solution = _solved_grid(rng, n)
            for _ in range(MAX_ORDERS):
                puzzle = list(solution)
                blanks = 0
                for cell in rng.sample(range(n * n), n * n):
                    keep = puzzle[cell]
                    puzzle[cell] = 0
                    if propagation_rounds(puzzle, n, hidden) is None:
                        puzzle[cell] = keep
                        continue
                    blanks += 1
                    if blanks == h:
                        break
                if blanks == h:
                    return self._draft(puzzle, solution, n, h)

    def _draft(self, puzzle: list[int], solution: list[int], n: int, h: int) -> Draft:
        rounds = propagation_rounds(puzzle, n, self.config.rule == "singles")
        assert rounds is not None
        b = _box(n)
        _, peers = _geometry(n)
        L = n * n
        tokens = [str(v) if v else BLANK for v in puzzle]
        target = [None if puzzle[i] else str(solution[i]) for i in range(L)]
        complexity = [None if puzzle[i] else rounds[i] for i in range(L)]
        cands = [None if puzzle[i] else n - len({puzzle[q] for q in peers[i] if puzzle[q]})
                 for i in range(L)]
        blank_peers = [None if puzzle[i] else sum(1 for q in peers[i] if not puzzle[q])
                       for i in range(L)]
        last = max(rounds)
        features = {"position": list(range(L)), "holes": [h] * L, "size": [n] * L,
                    "rounds": [last] * L, "row": [i // n for i in range(L)],
                    "col": [i % n for i in range(L)],
                    "box": [(i // n) // b * b + (i % n) // b for i in range(L)],
                    "candidates": cands, "blank_peers": blank_peers}
        return Draft(tokens, target, complexity, features, {"size": n, "holes": h, "rounds": last})

    # ---- the verifier ------------------------------------------------------------------
    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        n = self.config.size
        b = _box(n)
        if len(input) != n * n:
            raise ConfigError(f"sudoku: expected {n * n} cells, got {len(input)}")
        digits = [str(d) for d in range(1, n + 1)]
        grid: list[list[int]] = [[0] * n for _ in range(n)]
        for i, tok in enumerate(input):
            if tok == BLANK:
                continue
            if tok not in digits:
                raise ConfigError(f"sudoku: cell {i} holds {tok!r}, not a digit 1..{n} or {BLANK}")
            grid[i // n][i % n] = int(tok)

        def allowed(g: list[list[int]], r: int, c: int) -> set[int]:
            seen = set(g[r]) | {g[k][c] for k in range(n)}
            r0, c0 = r - r % b, c - c % b
            seen |= {g[r0 + i][c0 + j] for i in range(b) for j in range(b)}
            return set(range(1, n + 1)) - seen

        for r in range(n):
            for c in range(n):
                v = grid[r][c]
                if v:
                    grid[r][c] = 0
                    if v not in allowed(grid, r, c):
                        raise ConfigError(f"sudoku: the givens clash at row {r}, column {c}")
                    grid[r][c] = v

        # Backtracking over the cells in reading order; stop after two solutions.
        solutions: list[list[list[int]]] = []
        work = [row[:] for row in grid]

        def search(k: int) -> None:
            if len(solutions) == 2:
                return
            if k == n * n:
                solutions.append([row[:] for row in work])
                return
            r, c = divmod(k, n)
            if work[r][c]:
                search(k + 1)
                return
            for v in sorted(allowed(work, r, c)):
                work[r][c] = v
                search(k + 1)
                work[r][c] = 0

        search(0)
        if len(solutions) != 1:
            raise ConfigError(f"sudoku: the puzzle has {'no' if not solutions else 'more than one'} solution")
        solution = solutions[0]

        # Plain propagation: per round, every blank's candidate set, and (rule = singles) per
        # digit whether the blank is the only place left for it among the blanks of a unit.
        rounds = [[0] * n for _ in range(n)]
        g = [row[:] for row in grid]
        r_no = 0
        while any(0 in row for row in g):
            r_no += 1
            cand = {(r, c): allowed(g, r, c) for r in range(n) for c in range(n) if not g[r][c]}

            def unit_of(r: int, c: int) -> list[list[tuple[int, int]]]:
                r0, c0 = r - r % b, c - c % b
                return [[(r, k) for k in range(n)], [(k, c) for k in range(n)],
                        [(r0 + i, c0 + j) for i in range(b) for j in range(b)]]

            fill = {}
            for (r, c), s in cand.items():
                if len(s) == 1:
                    fill[r, c] = next(iter(s))
                    continue
                for v in s if self.config.rule == "singles" else ():
                    if any(all(v not in cand.get(q, set()) for q in unit if q != (r, c))
                           for unit in unit_of(r, c)):
                        fill[r, c] = v
                        break
            if not fill:
                raise ConfigError("sudoku: constraint propagation does not solve the puzzle")
            for (r, c), v in fill.items():
                if v != solution[r][c]:  # pragma: no cover - propagation is sound
                    raise ConfigError("sudoku: propagation contradicts the solution")
                g[r][c] = v
                rounds[r][c] = r_no

        target: list[str | None] = []
        complexity: list[int | None] = []
        for i, tok in enumerate(input):
            r, c = divmod(i, n)
            scored = tok == BLANK
            target.append(str(solution[r][c]) if scored else None)
            complexity.append(rounds[r][c] if scored else None)
        return target, complexity

    def tokens(self) -> list[str]:
        return [BLANK] + [str(d) for d in range(1, self.config.size + 1)]

    def train_labels(self) -> frozenset[str]:
        """Exact: every digit occurs as some blank's answer in training."""
        return frozenset(str(d) for d in range(1, self.config.size + 1))
