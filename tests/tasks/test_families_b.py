"""Family-specific checks of graph_distance, toposort, dyck, flipflop, agreement, copy and
reverse: hand-worked inputs with known answers, features recomputed by slow reference
implementations written here, split constraints (depth/distance bounds, unseen labels),
cross-knob errors and the prefix-only property of the causal families."""

from __future__ import annotations

import random

import pytest

import ponder.tasks as T
from ponder.errors import ConfigError
from ponder.tasks.base import SPLITS

FAMILIES = ("graph_distance", "toposort", "dyck", "flipflop", "agreement", "copy", "reverse")
CAUSAL = ("dyck", "flipflop", "agreement")
N = 200


def scored(values: list, target: list) -> list:
    return [v for v, t in zip(values, target) if t is not None]


# ---- every split of every family agrees with its own verifier -----------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_all_splits_agree_with_verifier(name: str) -> None:
    task = T.get(name)
    assert task.causal == (name in CAUSAL)
    for split in SPLITS:
        for i in range(N):
            ex = task.example(split, i)
            assert task.solve(list(ex.input)) == (ex.target, ex.complexity), (split, i)


# ---- graph_distance ------------------------------------------------------------------------

def test_graph_distance_hand_worked() -> None:
    task = T.get("graph_distance")
    inp = "src:2 0-1 1-2 2-3 4-5 n:0 n:1 n:2 n:3 n:4 n:5".split()
    target, complexity = task.solve(inp)
    assert target == [None] * 5 + ["2", "1", "0", "1", "inf", "inf"]
    # Unreachable: BFS needs (largest finite distance 2) + 1 rounds to prove it.
    assert complexity == [None] * 5 + [2, 1, 0, 1, 3, 3]
    # A cycle with a shortcut: the shorter way wins whatever the edge order.
    inp = "src:0 3-4 2-3 0-1 1-2 0-4 n:0 n:1 n:2 n:3 n:4".split()
    assert task.solve(inp)[0][6:] == ["0", "1", "2", "2", "1"]


def _reference_graph(inp: list[str]) -> tuple[dict, dict]:
    """Floyd–Warshall distances from the source and node degrees (slow and plain)."""
    nodes = [t[2:] for t in inp if t.startswith("n:")]
    edges = [t.split("-") for t in inp if "-" in t]
    big = 10**9
    d = {(a, b): (0 if a == b else big) for a in nodes for b in nodes}
    for a, b in edges:
        d[a, b] = d[b, a] = 1
    for k in nodes:
        for a in nodes:
            for b in nodes:
                if d[a, k] + d[k, b] < d[a, b]:
                    d[a, b] = d[a, k] + d[k, b]
    src = inp[0][4:]
    dist = {u: (None if d[src, u] >= big else d[src, u]) for u in nodes}
    degree = {u: sum(u in e for e in edges) for u in nodes}
    return dist, degree


def test_graph_distance_features_and_distance_bounds() -> None:
    task = T.get("graph_distance")
    max_dist = task.config.max_dist
    for split in SPLITS:
        for i in range(60):
            ex = task.example(split, i)
            dist, degree = _reference_graph(ex.input)
            n = len(dist)
            assert ex.params["n"] == n and ex.features["n"] == [n] * len(ex.input)
            assert len(set(dist)) == n  # distinct node labels
            edges = sum("-" in t for t in ex.input)
            assert ex.features["edges"][0] == edges == ex.params["edges"]
            assert ex.features["hub_degree"][0] == max(degree.values())
            far = max(v for v in dist.values() if v is not None)
            assert ex.params["eccentricity"] == far
            if split == "ood":
                assert far > max_dist and n >= task.config.ood_n_min
            else:
                assert far <= max_dist and n <= task.config.n_max
            for pos, tok in enumerate(ex.input):
                if not tok.startswith("n:"):
                    assert ex.target[pos] is None
                    continue
                u = tok[2:]
                assert ex.features["degree"][pos] == degree[u]
                assert ex.features["reachable"][pos] == int(dist[u] is not None)
                assert ex.features["unseen_label"][pos] == int(
                    dist[u] is not None and dist[u] > max_dist)
                assert (ex.target[pos] in task.train_labels()) == (
                    ex.features["unseen_label"][pos] == 0)


def test_graph_distance_ood_has_unseen_labels_and_train_labels_are_exact() -> None:
    task = T.get("graph_distance")
    train = {t for i in range(500) for t in task.example("train", i).target if t is not None}
    assert train == task.train_labels()
    ood = [t for i in range(50) for t in task.example("ood", i).target if t is not None]
    assert any(t not in train for t in ood) and any(t in train for t in ood)


def test_graph_distance_hubs_concentrate_degree() -> None:
    flat, hubbed = T.get("graph_distance", hubs=0.0), T.get("graph_distance", hubs=1.0)
    mean_hub = lambda task: sum(task.example("train", i).params["hub_degree"]  # noqa: E731
                                for i in range(300)) / 300
    assert mean_hub(hubbed) > mean_hub(flat) + 0.3


# ---- toposort ------------------------------------------------------------------------------

def _reference_toposort(inp: list[str]) -> dict[str, list[int]]:
    """Kahn with the smallest available id, by recomputing the available set each step; the
    longest path from a source by n rounds of relaxation."""
    n = inp.count("_")
    edges = [tuple(map(int, t.split(">"))) for t in inp if ">" in t]
    longest = [0] * n
    for _ in range(n):
        for u, v in edges:
            longest[v] = max(longest[v], longest[u] + 1)
    placed: list[int] = []
    out: dict[str, list[int]] = {"order": [], "frontier": [], "newly": [], "depth": []}
    before: set[int] = set()
    for t in range(n):
        avail = {v for v in range(n) if v not in placed
                 and all(u in placed for u, w in edges if w == v)}
        out["frontier"].append(len(avail))
        out["newly"].append(0 if t == 0 else len(avail - before))
        pick = min(avail)
        placed.append(pick)
        before = avail - {pick}
        out["order"].append(pick)
        out["depth"].append(longest[pick])
    degree = [sum(v in e for e in edges) for v in range(n)]
    out["hub"] = [max(degree)]
    return out


def test_toposort_hand_worked() -> None:
    task = T.get("toposort")
    inp = "3>1 1>0 4>0 2>4 _ _ _ _ _".split()
    target, complexity = task.solve(inp)
    assert target == [None] * 4 + ["2", "3", "1", "4", "0"]
    assert complexity == [None] * 4 + [0, 0, 1, 1, 2]
    ref = _reference_toposort(inp)
    assert ref["order"] == [2, 3, 1, 4, 0]
    assert ref["frontier"] == [2, 2, 2, 1, 1]
    assert ref["newly"] == [0, 1, 1, 0, 1]
    assert ref["depth"] == [0, 0, 1, 1, 2]
    assert ref["hub"] == [2]
    # No edges: the ids in order, all at depth 0.
    assert task.solve(["_"] * 3) == (["0", "1", "2"], [0, 0, 0])


def test_toposort_features_match_reference() -> None:
    task = T.get("toposort")
    for split in SPLITS:
        for i in range(60):
            ex = task.example(split, i)
            ref = _reference_toposort(ex.input)
            n = ex.params["n"]
            slots = slice(len(ex.input) - n, None)
            assert ex.input[slots] == ["_"] * n
            assert ex.target[slots] == [str(v) for v in ref["order"]]
            assert ex.features["frontier_size"][slots] == ref["frontier"]
            assert ex.features["newly_enabled"][slots] == ref["newly"]
            assert ex.features["dfs_depth"][slots] == ref["depth"] == ex.complexity[slots]
            assert ex.features["step"][slots] == list(range(n))
            edges = len(ex.input) - n
            assert ex.features["edges"][0] == edges == ex.params["edges"]
            assert ex.features["hub_degree"][0] == ref["hub"][0] == ex.params["hub_degree"]
            assert ex.features["unseen_label"][slots] == [int(v >= task.config.n_max)
                                                          for v in ref["order"]]


def test_toposort_ood_ids_unseen_in_train() -> None:
    task = T.get("toposort")
    train = {t for i in range(500) for t in task.example("train", i).target if t is not None}
    assert train == task.train_labels()
    ood = [t for i in range(50) for t in task.example("ood", i).target if t is not None]
    assert any(t not in train for t in ood)


# ---- dyck ----------------------------------------------------------------------------------

def _reference_dyck_distance(inp: list[str], i: int) -> int | None:
    """Distance from i back to the innermost opener still unclosed after i (cubic, plain)."""
    openers = {"(": ")", "[": "]", "{": "}", "<": ">"}
    for j in range(i, -1, -1):
        if inp[j] not in openers:
            continue
        balance, closed = 0, False
        for k in range(j, i + 1):
            balance += 1 if inp[k] in openers else -1
            if balance == 0:
                closed = True
                break
        if not closed:
            return i - j
    return None


def test_dyck_hand_worked() -> None:
    task = T.get("dyck")
    inp = "( [ ] ( ) )".split()
    target, complexity = task.solve(inp)
    assert target == [")", "]", ")", ")", ")", "none"]
    assert complexity == [1, 2, 1, 2, 1, 0]
    assert [_reference_dyck_distance(inp, i) for i in range(6)] == [0, 0, 2, 0, 4, None]
    four = T.get("dyck", k=4)
    assert four.solve("{ < > } [".split()) == (["}", ">", "}", "none", "]"], [1, 2, 1, 0, 1])
    with pytest.raises(ConfigError):
        task.solve(") (".split())


def test_dyck_strings_respect_depth_and_types() -> None:
    task = T.get("dyck")
    c = task.config
    allowed = set("()[]")  # k = 2 by default
    for split in SPLITS:
        for i in range(100):
            ex = task.example(split, i)
            assert set(ex.input) <= allowed
            assert ex.complexity[-1] == 0 and ex.target[-1] == "none"  # balanced
            deepest = max(ex.complexity)
            assert deepest == ex.params["depth"] == ex.features["max_depth"][0]
            assert len(ex.input) % 2 == 0
            if split == "ood":
                assert c.ood_depth_min <= deepest <= c.ood_depth_max
                assert c.ood_n_min <= len(ex.input) <= c.ood_n_max
            else:
                assert 1 <= deepest <= c.depth_max
                assert c.n_min <= len(ex.input) <= c.n_max
            assert ex.features["distance"] == [_reference_dyck_distance(ex.input, j)
                                               for j in range(len(ex.input))]


# ---- flipflop ------------------------------------------------------------------------------

def test_flipflop_hand_worked() -> None:
    task = T.get("flipflop")
    inp = "w1 i0 r w0 r i1 i1 r".split()
    target, complexity = task.solve(inp)
    assert target == [None, None, "1", None, "0", None, None, "0"]
    assert complexity == [None, None, 1, None, 0, None, None, 3]
    with pytest.raises(ConfigError):
        task.solve("i0 r".split())


def test_flipflop_stream_shape_and_features() -> None:
    task = T.get("flipflop")
    gaps: dict[str, list[int]] = {"train": [], "ood": []}
    for split in SPLITS:
        for i in range(100):
            ex = task.example(split, i)
            assert ex.input[0] in ("w0", "w1") and ex.input[-1] == "r"
            lo, hi = ((task.config.ood_n_min, task.config.ood_n_max) if split == "ood"
                      else (task.config.n_min, task.config.n_max))
            assert lo <= len(ex.input) <= hi
            for pos in ex.scored():
                last = max(j for j in range(pos) if ex.input[j][0] == "w")
                between = ex.input[last + 1:pos]
                assert ex.features["ignores_between"][pos] == sum(t[0] == "i" for t in between)
                assert ex.features["reads_between"][pos] == between.count("r")
                assert ex.features["writes_before"][pos] == sum(
                    t[0] == "w" for t in ex.input[:pos])
            if split in gaps:
                gaps[split] += scored(ex.complexity, ex.target)
    mean = {s: sum(g) / len(g) for s, g in gaps.items()}
    assert mean["ood"] > mean["train"]  # higher ignore probability: longer gaps


# ---- agreement -----------------------------------------------------------------------------

def test_agreement_hand_worked() -> None:
    task = T.get("agreement")
    inp = "the dog that the cats _ _ .".split()
    assert task.solve(inp) == ([None] * 5 + ["pl", "sg", None], [None] * 5 + [0, 1, None])
    inp = "the old dogs that the cat that the big birds _ _ _ .".split()
    target, complexity = task.solve(inp)
    assert target[10:13] == ["pl", "sg", "pl"] and complexity[10:13] == [0, 1, 2]
    assert task.solve("the hen _ .".split()) == ([None, None, "sg", None], [None, None, 0, None])


def test_agreement_structure_and_features() -> None:
    task = T.get("agreement")
    plural = {w + "s" for w in ("dog", "cat", "bird", "horse", "cow", "pig", "goat", "duck")}
    for split in SPLITS:
        for i in range(100):
            ex = task.example(split, i)
            d = ex.params["depth"]
            if split == "ood":
                assert task.config.ood_depth_min <= d <= task.config.ood_depth_max
            else:
                assert 0 <= d <= task.config.depth_max
            assert ex.input.count("that") == d and ex.input.count("_") == d + 1
            assert ex.input[-1] == "." and ex.features["depth"] == [d] * len(ex.input)
            nouns = [j for j, t in enumerate(ex.input) if t in plural or t in {p[:-1] for p in plural}]
            slots = [j for j, t in enumerate(ex.input) if t == "_"]
            assert ex.scored() == slots
            # Verb k (0-based) closes clause d-k, whose subject is the (d-k)-th noun.
            for k, pos in enumerate(slots):
                subject = nouns[d - k]
                assert ex.target[pos] == ("pl" if ex.input[subject] in plural else "sg")
                assert ex.complexity[pos] == d - (d - k) == k
                assert ex.features["level"][pos] == d - k
                assert ex.features["distance"][pos] == pos - subject


# ---- copy / reverse ------------------------------------------------------------------------

def test_copy_and_reverse_hand_worked() -> None:
    inp = "a b c | _ _ _".split()
    assert T.get("copy").solve(inp) == ([None] * 4 + ["a", "b", "c"], [None] * 4 + [1, 1, 1])
    assert T.get("reverse").solve(inp) == ([None] * 4 + ["c", "b", "a"], [None] * 4 + [1, 1, 1])


@pytest.mark.parametrize("name", ["copy", "reverse"])
def test_copy_reverse_offsets_and_constant_complexity(name: str) -> None:
    task = T.get(name)
    for split in SPLITS:
        for i in range(50):
            ex = task.example(split, i)
            n = ex.params["n"]
            assert ex.input[n] == "|" and ex.input[n + 1:] == ["_"] * n
            assert set(scored(ex.complexity, ex.target)) == {1}
            for pos in ex.scored():
                src = pos - ex.features["offset"][pos]
                assert 0 <= src < n and ex.input[src] == ex.target[pos]
    assert task.train_labels() == {t for i in range(300)
                                   for t in task.example("train", i).target if t}


# ---- causal families: the answer at i never depends on input after i -----------------------

def _random_suffix(name: str, rng: random.Random, k: int) -> list[str]:
    """Tokens that keep the input well-formed for the verifier when appended to any prefix."""
    pool = {"dyck": ["(", "["],  # openers only: never an unbalanced close
            "flipflop": ["w0", "w1", "i0", "i1", "r"],
            "agreement": ["the", "that", "dog", "cats", "big"]}[name]
    return [rng.choice(pool) for _ in range(k)]


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_answers_ignore_the_future(name: str) -> None:
    task = T.get(name)
    rng = random.Random(0)
    for i in range(40):
        ex = task.example("valid", i)
        for end in range(1, len(ex.input) + 1):
            changed = ex.input[:end] + _random_suffix(name, rng, rng.randint(1, 6))
            target, complexity = task.solve(changed)
            assert target[:end] == ex.target[:end]
            assert complexity[:end] == ex.complexity[:end]
            short_t, short_c = task.solve(ex.input[:end])  # and with the future cut off
            assert short_t == ex.target[:end] and short_c == ex.complexity[:end]


# ---- cross-knob checks ---------------------------------------------------------------------

@pytest.mark.parametrize("name, knobs", [
    ("graph_distance", dict(ood_n_min=10)),            # ood not beyond n_max
    ("graph_distance", dict(labels=12)),                # label space smaller than ood graphs
    ("graph_distance", dict(n_min=11)),
    ("toposort", dict(ood_n_min=8)),
    ("toposort", dict(ood_n_min=13)),                   # ood_n_min > ood_n_max
    ("dyck", dict(ood_depth_min=4, ood_n_min=16)),      # neither deeper nor longer
    ("dyck", dict(ood_n_max=8)),                        # too short to reach ood depth
    ("flipflop", dict(ood_n_min=32, ood_p_ignore=0.5)),  # neither longer nor sparser
    ("flipflop", dict(ood_p_ignore=0.1)),               # sparser train than ood
    ("agreement", dict(ood_depth_min=3)),
    ("agreement", dict(adjectives=0)),                  # p_adjective > 0 without adjectives
    ("copy", dict(ood_n_min=10)),
    ("reverse", dict(n_min=11)),
])
def test_cross_knob_rules(name: str, knobs: dict) -> None:
    with pytest.raises(ConfigError):
        T.get(name, **knobs)


def test_edges_of_cross_knob_rules_are_accepted() -> None:
    T.get("graph_distance", ood_n_min=11)
    T.get("toposort", ood_n_min=9)
    T.get("dyck", ood_depth_min=4, ood_n_min=25, ood_n_max=40)  # longer but not deeper
    T.get("flipflop", ood_n_min=32, ood_p_ignore=0.6)             # sparser but not longer
    T.get("agreement", ood_depth_min=4, adjectives=0, p_adjective=0.0)
