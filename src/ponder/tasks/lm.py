"""The language-model view of any task: the answer written out after the prompt.

Every registered task is sequence labelling (a target at some positions of one sequence).
Its LM view turns example ``(input, target)`` into a generation problem for a causal model:

    input   = prompt + [ANS] + answer            prompt: the task's input, unchanged
    target  = [None]·(len(prompt)−1) ... next token at ANS and at every answer token, EOS last

where ``answer`` is the task's scored targets in position order. So position ``P + j``
(``P = len(prompt)``; ANS sits at P) predicts ``answer[j]``, and the last answer token
predicts ``EOS``. The next-token loss is the ordinary token cross-entropy on exactly those
positions (they are the scored ones), so the trainer needs nothing new; a decoder generates
from ``prompt + [ANS]`` until EOS (:mod:`ponder.generate`).

Complexity and features move with the answer: the position predicting ``answer[j]`` carries
the complexity and features of the task position that ``answer[j]`` was the target of; EOS
has complexity 0. ``position`` is the LM sequence's own position; size features (constant
over the example) are kept everywhere.

Select it with ``task.lm=true`` in a run config (:func:`maybe_lm`), or wrap a task object
with :class:`LMView`.
"""

from __future__ import annotations

import random
from typing import Any

from ponder.errors import ConfigError
from ponder.tasks.base import Draft, Example, Task

ANS = "<ans>"   # the answer starts after this token
EOS = "<eos>"   # the answer is complete


class LMView(Task):
    """A task's LM view (see the module docstring). Not registered: it wraps a task object.

    ``name`` is the wrapped task's name (examples keep ``task == inner.name``, so every
    tool keyed by task name keeps working); ``causal`` is True.
    """

    causal = True

    def __init__(self, inner: Task) -> None:  # noqa: D107 - the inner task validated its knobs
        if isinstance(inner, LMView):
            raise ConfigError("the task is already an LM view")
        self.inner = inner
        self.config = inner.config
        self.name = inner.name
        self.complexity_doc = inner.complexity_doc
        self._config_key = inner._config_key + "|lm"

    # -- the mapping ------------------------------------------------------------------------
    @staticmethod
    def answer_of(target: list[str | None]) -> list[str]:
        """The scored targets in position order: the answer to write."""
        return [t for t in target if t is not None]

    def convert(self, ex: Example) -> Example:
        """A task example → its LM-view example (same split and index)."""
        P = len(ex.input)
        src = ex.scored()
        answer = [ex.target[i] for i in src]
        L = P + 1 + len(answer)
        target: list[str | None] = [None] * P + answer + [EOS]
        complexity: list[int | None] = [None] * P + [ex.complexity[i] for i in src] + [0]
        features: dict[str, list] = {"position": list(range(L))}
        for name, values in ex.features.items():
            if name == "position":
                continue
            if len(set(map(repr, values))) == 1:  # a size feature: constant over the example
                features[name] = [values[0]] * L
            else:  # a per-position feature follows the answer token it describes
                features[name] = [None] * P + [values[i] for i in src] + [None]
        features["answer_index"] = [None] * P + list(range(len(answer))) + [None]
        return Example(ex.task, ex.split, ex.index, list(ex.input) + [ANS] + answer,
                       target, complexity, features, dict(ex.params))

    @staticmethod
    def prompt_length(tokens: list[str]) -> int:
        """Index of the ANS token (the prompt's length); ConfigError when there is none."""
        try:
            return tokens.index(ANS)
        except ValueError:
            raise ConfigError(f"an LM-view sequence must contain {ANS}") from None

    # -- the task contract --------------------------------------------------------------------
    def example(self, split: str, index: int) -> Example:
        return self.convert(self.inner.example(split, index))

    def prompt(self, split: str, index: int) -> tuple[list[str], list[str], list[int]]:
        """(prompt + [ANS], the answer + [EOS], the answer tokens' complexities + [0]) of
        example ``index`` of ``split``: what a decoder starts from and should write."""
        ex = self.example(split, index)
        P = self.prompt_length(ex.input)  # ANS sits at P; from there on every target is scored
        return (list(ex.input[:P + 1]), [str(t) for t in ex.target[P:]],
                [int(c) for c in ex.complexity[P:] if c is not None])

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        """The verifier: the inner task's verifier on the prompt, then the answer shifted by
        one. Works on any prefix (a partial answer predicts its next token)."""
        if ANS not in input:
            return [None] * len(input), [None] * len(input)
        P = self.prompt_length(input)
        inner_target, inner_complexity = self.inner.solve(list(input[:P]))
        src = [i for i, t in enumerate(inner_target) if t is not None]
        answer = [inner_target[i] for i in src] + [EOS]
        costs = [inner_complexity[i] for i in src] + [0]
        target: list[str | None] = [None] * P
        complexity: list[int | None] = [None] * P
        for j in range(len(input) - P):
            target.append(answer[j] if j < len(answer) else None)
            complexity.append(costs[j] if j < len(answer) else None)
        return target, complexity

    def tokens(self) -> list[str]:
        return list(self.inner.tokens()) + [ANS, EOS]

    def split_params(self, split: str) -> dict[str, Any]:
        return self.inner.split_params(split)

    def sample(self, rng: random.Random, split: str) -> Draft:  # pragma: no cover - example() is overridden
        raise NotImplementedError("LMView builds examples from the inner task's")

    def knobs(self) -> dict[str, Any]:
        return self.inner.knobs()

    @property
    def size_knobs(self) -> dict[str, tuple[str, str]]:  # type: ignore[override]
        return self.inner.size_knobs

    def at_size(self, size: str, value: int) -> "LMView":
        """The LM view of the inner task pinned to ``value`` (a size sweep of an LM run)."""
        return LMView(self.inner.at_size(size, value))

    def train_labels(self) -> frozenset[str]:
        return self.inner.train_labels() | {EOS}

    def __repr__(self) -> str:
        return f"LMView({self.inner!r})"


def maybe_lm(task: Task, lm: bool) -> Task:
    """``task`` itself, or its LM view when ``lm`` (the run config's ``task.lm``)."""
    return LMView(task) if lm else task
