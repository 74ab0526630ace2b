"""Presets that carry a paper's name follow that paper's data (issue 21, item 6), and
listops' ``dependency_depth`` feature equals an independent parse of the input."""

from __future__ import annotations

import pytest

import ponder.tasks as T
from ponder.errors import ConfigError


def dependency_reference(tokens: list[str]) -> list[int | None]:
    """NDR's max_dependency_depth − 1 per ``]`` (dataset/listops.py: selector ops add 1 to the
    selected argument's, SM to the largest, MED to its middle ones'), from the tokens alone."""
    out: list[int | None] = [None] * len(tokens)

    def parse(i: int) -> tuple[int, int, int]:
        op, i = tokens[i], i + 1
        vals, deps = [], []
        while tokens[i] != "]":
            if tokens[i].startswith("["):
                v, d, i = parse(i)
            else:
                v, d, i = int(tokens[i]), 0, i + 1
            vals.append(v)
            deps.append(d)
        if op == "[SM":
            v, d = sum(vals) % 10, 1 + max(deps)
        elif op in ("[MAX", "[MIN"):
            pick = (max if op == "[MAX" else min)(range(len(vals)), key=lambda k: vals[k])
            v, d = vals[pick], 1 + deps[pick]
        else:
            order = sorted(range(len(vals)), key=lambda k: vals[k])
            m = len(vals) // 2
            mids = [order[m]] if len(vals) % 2 else [order[m - 1], order[m]]
            v, d = sum(vals[k] for k in mids) // len(mids), 1 + max(deps[k] for k in mids)
        out[i] = d
        return v, d, i + 1

    parse(0)
    return out


@pytest.mark.parametrize("preset", [None, "ndr"])
def test_listops_dependency_depth_matches_a_parse(preset):
    task = T.get("listops", preset)
    seen = set()
    for split in ("train", "ood"):
        for i in range(150):
            ex = task.example(split, i)
            dep = ex.features["dependency_depth"]
            assert dep == dependency_reference(list(ex.input)), (split, i)
            # never deeper than the sub-tree's height, and below it somewhere
            for d, h in zip(dep, ex.complexity):
                if d is not None:
                    assert 1 <= d <= h
                    seen.add(d < h)
    assert seen == {True, False}


def test_listops_ndr_preset():
    task = T.get("listops", "ndr")
    args, heights = set(), {"train": set(), "ood": set()}
    for split in heights:
        for i in range(200):
            ex = task.example(split, i)
            assert len(ex.input) <= 50
            heights[split].add(ex.params["depth"])
            args.update(a for a in ex.features["n_args"] if a is not None)
    assert heights["train"] == {1, 2, 3, 4, 5} and heights["ood"] == {7, 8}
    assert args == {2, 3, 4, 5}


def test_listops_lra_preset():
    task = T.get("listops", "lra")
    most = 0
    for i in range(25):
        ex = task.example("train", i)
        assert 500 <= len(ex.input) <= 2000
        assert ex.params["depth"] <= 9
        most = max(most, max(a for a in ex.features["n_args"] if a is not None))
    assert 6 <= most <= 10


def test_listops_length_knobs_are_checked():
    with pytest.raises(ConfigError):
        T.get("listops", n_min=60, n_max=50)
    with pytest.raises(ConfigError):  # heights 1..2 with ≤ 3 args never reach 400 tokens
        T.get("listops", depth_max=2, ood_depth_min=3, ood_depth_max=3, args_max=3,
              n_min=400).example("train", 0)


def test_arithmetic_ndr_preset_uses_plus_and_times_only():
    task = T.get("arithmetic", "ndr")
    assert "-" not in task.tokens()
    for split, want in (("train", set(range(1, 6))), ("ood", {7, 8})):
        got = set()
        for i in range(150):
            ex = task.example(split, i)
            assert "-" not in ex.input
            got.add(ex.params["depth"])
            assert task.solve(list(ex.input)) == (ex.target, ex.complexity)
        assert got == want
    assert "-" in T.get("arithmetic").tokens()
