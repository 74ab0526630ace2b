"""The task contract: a typed config of difficulty knobs, a generator, a verifier.

A task turns ``(config, split, index)`` into one :class:`Example`, deterministically: the
random generator is seeded from a hash of exactly those three things, so example ``i`` of a
split is the same on every machine, in every process, whatever the batch size.

Splits are data (``Task.split_params``): ``train``/``valid``/``test`` draw from the same
knob ranges and are made disjoint by a hash of the example's input (bucket < 10 → valid,
10..19 → test, the rest → train); ``ood`` draws sizes or depths strictly beyond train's.

Subclasses implement four things:

- ``Config``: a frozen dataclass whose fields are made with :func:`knob` (range-checked);
- ``split_params(split)``: the knob ranges one split draws from (a plain dict);
- ``sample(rng, split)``: draw one example as a :class:`Draft`;
- ``solve(input)``: the verifier, a plain obviously-correct solver that recomputes target
  and complexity from the input tokens alone (it must not reuse ``sample``'s logic);
- ``tokens()``: every token that may appear in an input or target, any split.

Per-position features fall in three groups, declared by the family (the decision-timing
probe, ``ponder.analysis.timing``, uses them): ``execution_features`` describe the state
of the algorithm at that token (hops resolved, carry chain so far, BFS frontier, stack
depth ...: what an online halting decision could follow); ``label_features`` are
properties of the answer or of the label set (``unseen_label``), kept for the
generalisation analysis and never used as predictors; every other feature is a static cue,
readable from the input before any computation (position, sizes, a token's own kind).
"""


from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ponder.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "valid", "test", "ood")
HASH_BUCKETS = 100
VALID_BUCKETS = range(0, 10)
TEST_BUCKETS = range(10, 20)
MAX_ATTEMPTS = 10_000


def knob(default: Any, lo: float | None = None, hi: float | None = None, help: str = "",
         choices: tuple | None = None) -> Any:
    """A config field with a validated range ``[lo, hi]`` (inclusive) or a set of choices."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "help": help, "choices": choices})


def describe_knobs(knobs_cls: type) -> str:
    """One line per knob of a knobs dataclass: ``name=default [lo, hi]`` or ``name=default a|b``
    (for the CLI's catalogue tables); ``-`` when there are none."""
    lines = []
    for f in dataclasses.fields(knobs_cls):
        meta = f.metadata
        if meta.get("choices"):
            rng = "|".join(map(str, meta["choices"]))
        elif meta.get("lo") is not None or meta.get("hi") is not None:
            rng = f"[{meta.get('lo')}, {meta.get('hi')}]"
        else:
            rng = ""
        lines.append(f"{f.name}={f.default!r} {rng}".strip())
    return "\n".join(lines) or "-"


@dataclass
class Draft:
    """What ``Task.sample`` returns: one example before it is stamped with split/index."""

    input: list[str]
    target: list[str | None]
    complexity: list[int | None]
    features: dict[str, list]
    params: dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One example: parallel per-position lists (``None`` where a position is not scored)."""

    task: str
    split: str
    index: int
    input: list[str]
    target: list[str | None]
    complexity: list[int | None]
    features: dict[str, list]
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def scored(self) -> list[int]:
        """Positions that carry a target."""
        return [i for i, t in enumerate(self.target) if t is not None]


def input_bucket(tokens: list[str]) -> int:
    """Stable hash bucket of an input (decides train / valid / test membership)."""
    digest = hashlib.sha256(" ".join(tokens).encode()).digest()
    return int.from_bytes(digest[:8], "little") % HASH_BUCKETS


def split_accepts(split: str, bucket: int) -> bool:
    if split == "valid":
        return bucket in VALID_BUCKETS
    if split == "test":
        return bucket in TEST_BUCKETS
    if split == "train":
        return bucket >= TEST_BUCKETS.stop
    return True  # ood: sizes already lie outside train's range


class Task:
    """Base class of every task family. See the module docstring for the contract."""

    name: ClassVar[str]
    causal: ClassVar[bool] = False
    complexity_doc: ClassVar[str] = ""
    Config: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    execution_features: ClassVar[tuple[str, ...]] = ()   # algorithm state at the token
    label_features: ClassVar[tuple[str, ...]] = ()       # answer / label-set properties
    # Size knobs a sweep may pin (``ponder eval --sweep``): size name (the ``split_params``
    # key and the ``Example.params`` key) -> the (min, max) knobs of its training range.
    size_knobs: ClassVar[dict[str, tuple[str, str]]] = {}

    def __init__(self, config: Any) -> None:
        validate_config(config)
        self.config = config
        self.check()
        self._config_key = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)

    # ---- to implement -------------------------------------------------------------
    def check(self) -> None:
        """Cross-knob validation (e.g. ood range strictly beyond train). Raise ConfigError."""

    def check_size(self, size: str, value: int) -> None:
        """Refuse (ConfigError) a pinned size the family cannot draw in reasonable time, for
        :meth:`at_size`; the default accepts any (a failed draw raises on its own)."""

    def split_params(self, split: str) -> dict[str, Any]:
        raise NotImplementedError

    def sample(self, rng: random.Random, split: str) -> Draft:
        raise NotImplementedError

    def solve(self, input: list[str]) -> tuple[list[str | None], list[int | None]]:
        raise NotImplementedError

    def tokens(self) -> list[str]:
        raise NotImplementedError

    # ---- provided -----------------------------------------------------------------
    def rng(self, split: str, index: int, attempt: int) -> random.Random:
        key = f"{self.name}|{self._config_key}|{split}|{index}|{attempt}"
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        return random.Random(seed)

    def example(self, split: str, index: int) -> Example:
        """Example ``index`` of ``split``: the same in every process and on every machine."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if index < 0:
            raise ConfigError(f"example index must be >= 0, got {index}")
        for attempt in range(MAX_ATTEMPTS):
            draft = self.sample(self.rng(split, index, attempt), split)
            if split_accepts(split, input_bucket(draft.input)):
                break
        else:  # pragma: no cover - only with a degenerate config
            raise ConfigError(f"{self.name}: cannot draw a {split} example (input space too small?)")
        return Example(self.name, split, index, draft.input, draft.target, draft.complexity,
                       draft.features, draft.params)

    def knobs(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def at_size(self, size: str, value: int) -> "Task":
        """A copy whose every split draws the training distribution with ``size`` pinned to
        ``value`` (a size sweep's generator; ``ponder.eval.sweep``). Its examples are seeded
        apart from the task's own (the pinned size is part of the seed key); the vocabulary
        and the train label set stay the task's, since the config is unchanged."""
        if size not in self.size_knobs:
            raise ConfigError(f"task {self.name!r} has no size knob {size!r}; size knobs: "
                              f"{', '.join(self.size_knobs) or 'none'}")
        self.check_size(size, value)
        train_params = self.split_params("test")  # train/valid/test share the knob ranges
        clone = copy.copy(self)
        # an instance attribute shadows the method: sample() then sees the pinned range
        clone.split_params = lambda split: {**train_params, size: (value, value)}
        clone._config_key = f"{self._config_key}|sweep:{size}={value}"
        return clone

    TRAIN_LABEL_SAMPLES: ClassVar[int] = 2_000

    def train_labels(self) -> frozenset[str]:
        """Every target token that can occur in the ``train`` split (cached per task object).

        The evaluator uses it to mark ood tokens whose label never occurs in training
        (``seen_label`` in the per-token records). This default collects the targets of the
        first ``TRAIN_LABEL_SAMPLES`` train examples, which is exact for tasks with a small
        label set; a family whose train labels follow from its knobs (e.g. ``list_rank``'s
        distances ``0..m_max-1``) overrides it with the exact set.
        """
        cached = self.__dict__.get("_train_labels")
        if cached is None:
            labels: set[str] = set()
            for i in range(self.TRAIN_LABEL_SAMPLES):
                labels.update(t for t in self.example("train", i).target if t is not None)
            cached = self.__dict__["_train_labels"] = frozenset(labels)
        return cached

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.knobs().items())
        return f"{type(self).__name__}({args})"


def validate_config(config: Any) -> None:
    """Check every knob's type and range; raise ConfigError naming the knob."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        meta = f.metadata
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"knob {f.name}={value!r} must be one of {', '.join(map(str, choices))}")
        lo, hi = meta.get("lo"), meta.get("hi")
        if isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"knob {f.name}={value!r} must be true or false")
            continue
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"knob {f.name}={value!r} must be a number")
            if isinstance(f.default, int) and not isinstance(value, int):
                raise ConfigError(f"knob {f.name}={value!r} must be an integer")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise ConfigError(f"knob {f.name}={value} out of range [{lo}, {hi}]")


def parse_knob(config_cls: type, name: str, text: str) -> Any:
    """Convert a ``knob=value`` string to the knob's type (for the CLI)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if name not in fields:
        raise ConfigError(f"unknown knob {name!r}; knobs: {', '.join(fields)}")
    default = fields[name].default
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"knob {name}={text!r}: expected {type(default).__name__}") from None
    return text
