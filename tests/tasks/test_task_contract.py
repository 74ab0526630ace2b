"""Every registered task, every split: the generated targets and complexities agree with the
task's independent verifier, the per-position lists line up, and every token is in the vocab."""

from __future__ import annotations

import pytest

import ponder.tasks as T
from ponder.tasks.base import SPLITS
from ponder.tasks.vocab import Vocab

TASKS = T.names()
N = 200


def check_example(task: T.Task, ex: T.Example, vocab: Vocab) -> None:
    L = len(ex.input)
    assert L > 0
    assert len(ex.target) == L and len(ex.complexity) == L
    for name, values in ex.features.items():
        assert len(values) == L, f"feature {name} has {len(values)} values for {L} positions"
    # None exactly at the unscored positions, an int complexity at every scored one.
    assert [t is None for t in ex.target] == [c is None for c in ex.complexity]
    assert ex.scored(), "an example without any scored position"
    assert all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
               for c in ex.complexity if c is not None)
    assert all(isinstance(t, str) for t in ex.input)
    # The verifier recomputes target and complexity from the input tokens alone.
    target, complexity = task.solve(list(ex.input))
    assert target == ex.target, f"{ex.split} #{ex.index}: target differs from the verifier"
    assert complexity == ex.complexity, f"{ex.split} #{ex.index}: complexity differs from the verifier"
    # Every token (input and target) is in the task's vocabulary.
    for tok in ex.input:
        assert tok in vocab.stoi, f"input token {tok!r} not in the vocab"
    for tok in ex.target:
        assert tok is None or tok in vocab.stoi, f"target token {tok!r} not in the vocab"
    # Features: `position` and a size feature that is constant and equals a param.
    assert ex.features["position"] == list(range(L))
    sizes = {k for k, v in ex.features.items()
             if k != "position" and len(set(map(repr, v))) == 1 and v[0] in ex.params.values()}
    assert sizes, f"no size feature among {sorted(ex.features)} (params {ex.params})"


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", TASKS)
def test_examples_agree_with_verifier(name: str, split: str) -> None:
    task = T.get(name)
    vocab = Vocab.for_task(task)
    for i in range(N):
        ex = task.example(split, i)
        assert (ex.task, ex.split, ex.index) == (name, split, i)
        check_example(task, ex, vocab)


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", TASKS)
def test_examples_agree_with_verifier_sweep(name: str, split: str) -> None:
    task = T.get(name)
    vocab = Vocab.for_task(task)
    for i in range(2_000):
        check_example(task, task.example(split, i), vocab)


@pytest.mark.parametrize("name", TASKS)
def test_every_preset_builds_and_verifies(name: str) -> None:
    cls = T.task_class(name)
    for preset in cls.presets:
        task = T.get(name, preset=preset)
        vocab = Vocab.for_task(task)
        for split in SPLITS:
            for i in range(5):
                check_example(task, task.example(split, i), vocab)


@pytest.mark.parametrize("name", [n for n in TASKS if T.task_class(n).causal])
def test_causal_tasks_depend_on_prefix_only(name: str) -> None:
    """A causal task's target at i is a function of input[0..i]: the verifier run on every
    prefix gives the same answer at the prefix's last position."""
    task = T.get(name)
    for i in range(30):
        ex = task.example("valid", i)
        for end in range(1, len(ex.input) + 1):
            target, complexity = task.solve(ex.input[:end])
            assert target[end - 1] == ex.target[end - 1]
            assert complexity[end - 1] == ex.complexity[end - 1]
