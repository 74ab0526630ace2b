"""The LM view of every registered task: the answer after the prompt, next-token targets on
the answer, the verifier on any prefix, ``task.lm=true`` in a run config."""

from __future__ import annotations

import pytest
import torch

import ponder.tasks as T
from ponder.errors import ConfigError
from ponder.tasks.base import SPLITS
from ponder.tasks.lm import ANS, EOS, LMView, maybe_lm
from ponder.tasks.vocab import Vocab

TASKS = T.names()
N = 40


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", TASKS)
def test_lm_view_writes_the_answer_after_the_prompt(name: str, split: str) -> None:
    inner = T.get(name)
    task = LMView(inner)
    vocab = Vocab.for_task(task)
    for i in range(N):
        base, ex = inner.example(split, i), task.example(split, i)
        assert (ex.task, ex.split, ex.index) == (name, split, i)
        P = len(base.input)
        answer = [base.target[p] for p in base.scored()]
        assert answer, "every task scores at least one position"
        L = len(ex.input)
        assert ex.input == base.input + [ANS] + answer
        assert len(ex.target) == len(ex.complexity) == L
        # next-token targets exactly on the answer: at ANS and at every answer token, EOS last
        assert ex.target[:P] == [None] * P
        assert ex.target[P:] == ex.input[P + 1:] + [EOS]
        assert ex.complexity[P:] == [base.complexity[p] for p in base.scored()] + [0]
        assert [t is None for t in ex.target] == [c is None for c in ex.complexity]
        for key, values in ex.features.items():
            assert len(values) == L, key
        assert ex.features["position"] == list(range(L))
        # the verifier recomputes everything from the LM input alone
        assert task.solve(list(ex.input)) == (ex.target, ex.complexity)
        for tok in ex.input + [t for t in ex.target if t is not None]:
            assert tok in vocab.stoi
        prompt, written, costs = task.prompt(split, i)
        assert prompt == base.input + [ANS] and written == answer + [EOS]
        assert costs == ex.complexity[P:]


@pytest.mark.parametrize("name", TASKS)
def test_lm_view_is_causal(name: str) -> None:
    """The target at i is a function of input[0..i]: the verifier on every prefix agrees."""
    task = LMView(T.get(name))
    assert task.causal
    for i in range(8):
        ex = task.example("valid", i)
        for end in range(1, len(ex.input) + 1):
            target, complexity = task.solve(ex.input[:end])
            assert target[end - 1] == ex.target[end - 1]
            assert complexity[end - 1] == ex.complexity[end - 1]


@pytest.mark.parametrize("name", TASKS)
def test_lm_batches_score_exactly_the_answer(name: str) -> None:
    """Collated, the scored targets are the next input token (the shifted answer) and EOS."""
    task = LMView(T.get(name))
    vocab = Vocab.for_task(task)
    batch = T.collate([task.example("train", i) for i in range(6)], vocab)
    scored = batch.targets != T.IGNORE_INDEX
    for b in range(len(batch)):
        pos = scored[b].nonzero().flatten()
        n = int(batch.mask[b].sum())
        assert int(pos[-1]) == n - 1 and batch.targets[b, n - 1] == vocab.stoi[EOS]
        assert torch.equal(batch.targets[b, pos[:-1]], batch.tokens[b, pos[:-1] + 1])
        assert int(pos[0]) == batch.tokens[b].tolist().index(vocab.stoi[ANS])


def test_lm_view_in_a_run_config_and_bad_input() -> None:
    from ponder.train.config import load_config
    from ponder.train.trainer import build_task

    cfg = load_config(None, ["task.name=parity", "task.lm=true"])
    task = build_task(cfg)
    assert isinstance(task, LMView) and task.inner.name == "parity"
    assert not isinstance(build_task(load_config(None, ["task.name=parity"])), LMView)
    assert maybe_lm(task.inner, False) is task.inner
    with pytest.raises(ConfigError):
        LMView(task)
    with pytest.raises(ConfigError):
        load_config(None, ["task.lm=maybe"])
