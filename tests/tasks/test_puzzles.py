"""sudoku and maze: hand-worked cases, properties checked by plain code written here (the
filled grid is a Latin square with boxes; the marked maze path is a simple S→G walk in a
tree), the verifiers' refusals, and generator/verifier agreement on the presets the
parametrised contract tests do not run at length (9×9, the big maze, hidden singles)."""

from __future__ import annotations

import pytest

import ponder.tasks as T
from ponder.errors import ConfigError
from ponder.tasks.base import SPLITS


# ---- sudoku --------------------------------------------------------------------------------

def test_sudoku_hand_worked_rounds() -> None:
    # solution 1 2 3 4 / 3 4 1 2 / 2 1 4 3 / 4 3 2 1. (0,1), (0,2), (1,0), (2,0) each have one
    # candidate left at once (round 1); (0,0) keeps {1, 2, 3} until its row is filled (round 2).
    inp = "_ _ _ 4  _ 4 1 2  _ 1 4 3  4 3 2 1".split()
    target, complexity = T.get("sudoku").solve(inp)
    blank = [None] * 11
    assert target == ["1", "2", "3", None, "3", None, None, None, "2"] + blank[:7]
    assert complexity == [2, 1, 1, None, 1, None, None, None, 1] + blank[:7]
    # with hidden singles (0,0) is forced at once: column 0's other blanks cannot hold a 1
    assert T.get("sudoku", rule="singles").solve(inp) == (target, [1] + complexity[1:])


# Unique (backtracking finds one solution) but naked singles get stuck; hidden singles solve it.
HARD_9 = ("_ _ _ 8 _ _ _ _ _ _ _ 9 _ 7 5 4 3 8 _ _ _ _ _ 6 7 5 _ _ _ _ 5 _ _ _ 2 _ 4 _ 5 3 _ 2 9 7 "
          "_ _ 8 _ _ _ 7 _ 4 _ _ 3 2 7 _ _ _ 8 4 _ _ 7 4 5 _ _ 9 _ _ _ _ _ 3 9 _ 1 _").split()


def test_sudoku_rule_decides_what_is_forced() -> None:
    with pytest.raises(ConfigError, match="propagation does not solve"):
        T.get("sudoku", preset="9x9").solve(HARD_9)
    target, complexity = T.get("sudoku", preset="9x9", rule="singles").solve(HARD_9)
    assert sum(t is not None for t in target) == HARD_9.count("_")
    assert min(c for c in complexity if c is not None) == 1


@pytest.mark.parametrize("text,message", [
    ("_ " * 16, "more than one"),                        # every 4×4 grid fits
    ("1 1 _ _ " + "_ " * 12, "clash"),                   # two 1s in a row
    ("1 2 _ _ 3 _ _ _ _ _ _ _ _ 4 _ _", "no solution"),  # no clash, but (1,1) has no candidate
    ("1 2 3 " + "_ " * 12, "expected 16"),
    ("1 2 3 5 " + "_ " * 12, "not a digit"),
])
def test_sudoku_verifier_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        T.get("sudoku").solve(text.split())


def _valid_filled(cells: list[int], n: int) -> bool:
    b = 3 if n == 9 else 2
    digits = set(range(1, n + 1))
    rows = [cells[r * n:(r + 1) * n] for r in range(n)]
    cols = [[rows[r][c] for r in range(n)] for c in range(n)]
    boxes = [[rows[br + i][bc + j] for i in range(b) for j in range(b)]
             for br in range(0, n, b) for bc in range(0, n, b)]
    return all(set(u) == digits for u in rows + cols + boxes)


@pytest.mark.parametrize("kw,per_split", [({}, 200), ({"preset": "9x9"}, 15),
                                          ({"preset": "9x9", "rule": "singles"}, 10),
                                          ({"rule": "singles"}, 100)])
def test_sudoku_generated_puzzles(kw: dict, per_split: int) -> None:
    task = T.get("sudoku", **kw)
    n = task.config.size
    for split in SPLITS:
        lo, hi = task.split_params(split)["holes"]
        for i in range(per_split):
            ex = task.example(split, i)
            assert task.solve(list(ex.input)) == (ex.target, ex.complexity), (split, i)
            filled = [int(t if t is not None else x) for x, t in zip(ex.input, ex.target)]
            assert _valid_filled(filled, n)
            assert ex.input.count("_") == ex.params["holes"] and lo <= ex.params["holes"] <= hi
            rounds = [c for c in ex.complexity if c is not None]
            # every round up to the last forces at least one cell
            assert set(rounds) == set(range(1, ex.params["rounds"] + 1))


def test_sudoku_ood_needs_more_rounds() -> None:
    task = T.get("sudoku")
    mean = {s: sum(task.example(s, i).params["rounds"] for i in range(200)) / 200 for s in ("train", "ood")}
    assert mean["ood"] > mean["train"]


def test_sudoku_knob_checks() -> None:
    with pytest.raises(ConfigError, match="strictly beyond"):
        T.get("sudoku", ood_holes_min=8)
    with pytest.raises(ConfigError, match="exceeds"):
        T.get("sudoku", ood_holes_max=13)
    with pytest.raises(ConfigError):
        T.get("sudoku", holes_min=9, holes_max=8)
    with pytest.raises(ConfigError):
        T.get("sudoku", size=5)


# ---- maze ----------------------------------------------------------------------------------

# 2×2 rooms. S top-left; the passages join S–(0,2) and S–(2,0)–(2,2)=G; (0,2) is a dead end.
SMALL = "S . . | . # # | . . G |".split()


def test_maze_hand_worked() -> None:
    target, complexity = T.get("maze").solve(SMALL)
    assert target == [None, "0", "0", None, "1", None, None, None, "1", "1", None, None]
    assert complexity == [None, 1, 2, None, 1, None, None, None, 2, 3, None, None]


@pytest.mark.parametrize("text,message", [
    ("S . . | . # . | . . G |", "2 shortest paths"),   # a loop: two ways round
    ("S . . | # # # | . . G |", "not reachable"),
    ("S . . | . # | . . G |", "unequal"),
    ("S . . | . # # | . . G", "end with"),
    ("S . . | . # # | . . . |", "one S and one G"),
    ("S . x | . # # | . . G |", "unknown tile"),
])
def test_maze_verifier_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        T.get("maze").solve(text.split())


def test_maze_loop_with_unique_shortest_path_is_accepted() -> None:
    # S–G directly adjacent through one tile, and a longer way round: one shortest path.
    target, _ = T.get("maze").solve("S . G | . # . | . . . |".split())
    assert target[1] == "1" and target[4] == "0" and target[6] == "0"


def _grid(ex: T.Example) -> list[list[str]]:
    rows, row = [], []
    for tok in ex.input:
        if tok == "|":
            rows.append(row)
            row = []
        else:
            row.append(tok)
    return rows


@pytest.mark.parametrize("kw,per_split", [({}, 200), ({"preset": "large"}, 30)])
def test_maze_generated(kw: dict, per_split: int) -> None:
    task = T.get("maze", **kw)
    for split in SPLITS:
        for i in range(per_split):
            ex = task.example(split, i)
            assert task.solve(list(ex.input)) == (ex.target, ex.complexity), (split, i)
            g = _grid(ex)
            n = ex.params["n"]
            assert len(g) == 2 * n - 1 and all(len(r) == 2 * n - 1 for r in g)
            open_ = {(r, c) for r, row in enumerate(g) for c, t in enumerate(row) if t != "#"}
            # a spanning tree of the n² rooms: every room open, n² − 1 passage tiles
            assert all((2 * r, 2 * c) in open_ for r in range(n) for c in range(n))
            assert len(open_) == n * n + n * n - 1
            # the marked tiles plus S and G form a simple walk from S to G
            cells = [(r, c) for r, row in enumerate(g) for c, _ in enumerate(row)]
            scored = [t for t in ex.target if t is not None]
            marked = {cells[k] for k, t in enumerate(_tile_targets(ex)) if t == "1"}
            s = next(p for p in cells if g[p[0]][p[1]] == "S")
            goal = next(p for p in cells if g[p[0]][p[1]] == "G")
            walk, prev, cur = [s], None, s
            while cur != goal:
                nxt = [q for q in marked | {goal} if abs(q[0] - cur[0]) + abs(q[1] - cur[1]) == 1 and q != prev]
                assert len(nxt) == 1, (split, i, cur, nxt)
                prev, cur = cur, nxt[0]
                walk.append(cur)
            assert len(walk) - 1 == ex.params["path_length"] and len(walk) - 2 == len(marked)
            assert set(scored) <= {"0", "1"}


def _tile_targets(ex: T.Example) -> list:
    return [t for tok, t in zip(ex.input, ex.target) if tok != "|"]


def test_maze_ood_is_bigger_and_deeper() -> None:
    task = T.get("maze")
    far = {s: max(c for i in range(100) for c in task.example(s, i).complexity if c is not None)
           for s in ("train", "ood")}
    assert far["ood"] > far["train"]
    with pytest.raises(ConfigError, match="strictly beyond"):
        T.get("maze", ood_n_min=5)
