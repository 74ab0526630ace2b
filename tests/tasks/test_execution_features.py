"""Execution-state features: every family declares them, emits them, and they match slow
reference computations from the input alone."""

from __future__ import annotations

from collections import deque

import pytest

import ponder.tasks as T
from ponder.tasks.registry import names as task_names

TASKS = sorted(task_names())
# complexity is constant (1 at every slot): no algorithm state to follow
NO_STATE = {"copy", "reverse"}


def _examples(name, n=25):
    task = T.get(name)
    return [task.example(split, i) for split in ("train", "ood") for i in range(n)]


@pytest.mark.parametrize("name", TASKS)
def test_declared_features_exist_and_groups_are_disjoint(name):
    task = T.get(name)
    execution, label = set(task.execution_features), set(task.label_features)
    assert not execution & label and "position" not in execution | label
    if name not in NO_STATE:
        assert execution, f"{name} declares no execution-state feature"
    for ex in _examples(name, 5):
        assert execution | label <= set(ex.features), name
        # some state is defined at every scored position (one feature may be undefined in
        # places: dyck's distance when the stack is empty)
        for i in ex.scored() if execution else ():
            assert any(ex.features[f][i] is not None for f in execution), (name, i)
    for f in execution:
        assert any(ex.features[f][i] is not None for ex in _examples(name, 5) for i in ex.scored()), f


def test_list_rank_hops_from_a_walk_over_the_edges():
    for ex in _examples("list_rank"):
        head = ex.input[0].split(":")[1]
        succ = dict(tok.split(">") for tok in ex.input[1:])
        walk = [head]
        while succ[walk[-1]] != "end":
            walk.append(succ[walk[-1]])
        m = len(walk)
        for i in ex.scored():
            d = walk.index(ex.input[i].split(">")[0])
            assert ex.features["hops_to_head"][i] == d and ex.features["hops_to_end"][i] == m - 1 - d
            rounds, reach = 0, 1   # pointer jumping: after r rounds a node sees 2**r hops back
            while reach <= d:
                rounds, reach = rounds + 1, reach * 2
            assert ex.features["doubling_rounds"][i] == rounds
            assert ex.features["is_first"][i] == int(d == 0)
    assert "unseen_label" in T.get("list_rank").label_features


def test_graph_distance_frontier_from_a_bfs_over_the_tokens():
    for ex in _examples("graph_distance"):
        src = ex.input[0].split(":")[1]
        adj: dict[str, list[str]] = {}
        for tok in ex.input:
            if "-" in tok:
                a, b = tok.split("-")
                adj.setdefault(a, []).append(b)
                adj.setdefault(b, []).append(a)
        dist, queue = {src: 0}, deque([src])
        while queue:
            u = queue.popleft()
            for v in adj.get(u, []):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    queue.append(v)
        far = max(dist.values())
        for i in ex.scored():
            u = ex.input[i].split(":")[1]
            r = dist.get(u, far + 1)
            assert ex.features["frontier"][i] == sum(1 for d in dist.values() if d == r)
            assert ex.features["settled_before"][i] == sum(1 for d in dist.values() if d < r)


def test_dyck_stack_depth_by_counting_brackets():
    for ex in _examples("dyck"):
        depth = 0
        for i, tok in enumerate(ex.input):
            depth += 1 if tok in "([{<" else -1
            assert ex.features["stack_depth"][i] == depth


def test_flipflop_since_write_by_looking_back():
    for ex in _examples("flipflop"):
        for i in ex.scored():
            back = next(j for j in range(i - 1, -1, -1) if ex.input[j].startswith("w"))
            assert ex.features["since_write"][i] == i - back


def test_addition_carry_in_by_schoolbook():
    task = T.get("addition")
    for ex in _examples("addition"):
        plus, eq = ex.input.index("+"), ex.input.index("=")
        a, b = ex.input[:plus], ex.input[plus + 1:eq]
        n, carry = len(a), 0
        for q in range(n + 1):   # place q, least significant first
            pos = len(ex.input) - 1 - q
            assert ex.features["carry_in"][pos] == carry
            if q < n:
                carry = int(int(a[n - 1 - q]) + int(b[n - 1 - q]) + carry >= task.config.base)


@pytest.mark.parametrize("name", ["listops", "arithmetic"])
def test_argument_heights_by_parsing(name):
    """Heights of a closing bracket's arguments, recomputed with an explicit stack."""
    openers = ("[", "(")
    for ex in _examples(name):
        stack: list[list[int]] = [[]]   # heights of the arguments of each open list
        for i, tok in enumerate(ex.input):
            if tok.startswith(openers):
                stack.append([])
            elif tok in ("]", ")"):
                args = sorted(stack.pop(), reverse=True)
                height = 1 + args[0]
                assert ex.complexity[i] == height
                assert ex.features["arg_height_max"][i] == args[0]
                other = "arg_height_second" if name == "listops" else "arg_height_min"
                assert ex.features[other][i] == args[1]
                stack[-1].append(height)
            elif tok.isdigit():
                stack[-1].append(0)


def test_maze_frontier_from_a_bfs_over_the_tiles():
    from ponder.tasks.families.maze import EOL, WALL

    for ex in _examples("maze"):
        rows, row = [], []
        for tok in ex.input:
            if tok == EOL:
                rows.append(row)
                row = []
            else:
                row.append(tok)
        start = next((r, c) for r, line in enumerate(rows) for c, t in enumerate(line) if t == "S")
        dist, queue = {start: 0}, deque([start])
        while queue:
            r, c = queue.popleft()
            for q in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= q[0] < len(rows) and 0 <= q[1] < len(rows[0]) and q not in dist \
                        and rows[q[0]][q[1]] != WALL:
                    dist[q] = dist[(r, c)] + 1
                    queue.append(q)
        side = len(rows[0]) + 1  # tokens per row, EOL included
        scored_d = {i: dist[(i // side, i % side)] for i in ex.scored()}
        for i, d in scored_d.items():
            assert ex.features["frontier"][i] == sum(1 for e in scored_d.values() if e == d)
            assert ex.features["settled_before"][i] == sum(1 for e in scored_d.values() if e < d)


def test_sudoku_candidates_and_blank_peers_by_scanning_row_column_box():
    for ex in _examples("sudoku"):
        n = ex.features["size"][0]
        b = int(n ** 0.5)
        cell = lambda r, c: ex.input[r * n + c]  # noqa: E731
        for i in ex.scored():
            r, c = divmod(i, n)
            peers = {(r, k) for k in range(n)} | {(k, c) for k in range(n)} | {
                (r0, c0) for r0 in range(r // b * b, r // b * b + b)
                for c0 in range(c // b * b, c // b * b + b)}
            peers.discard((r, c))
            values = {cell(*q) for q in peers if cell(*q).isdigit()}
            assert ex.features["candidates"][i] == n - len(values)
            assert ex.features["blank_peers"][i] == sum(1 for q in peers if not cell(*q).isdigit())
