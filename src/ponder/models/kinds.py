"""Registries of what lives inside a Transformer block: FFN kinds, attention kinds, block routers.

Each kind is a module class with a ``name``, a frozen ``Knobs`` dataclass (fields made with
:func:`ponder.tasks.base.knob`, so ranges are checked and listed), ``causal`` (whether the
output for token t uses positions ≤ t only; a causal model refuses a non-causal kind) and a
``paper``. It is registered with the registry's decorator::

    @FFNS.register
    class Dense(FFN):
        name = "dense"
        ...

and selected from the model config (``model.ffn.kind`` / ``model.ffn.knobs``, likewise
``model.attention`` and ``model.router``). ``ponder ffn list``, ``ponder attention list`` and
``ponder router list`` print the registries. The contracts every kind of a registry obeys are
the base classes in :mod:`ponder.models.layers` (``FFN``, ``AttentionKind``, ``Router``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

from ponder.errors import ConfigError
from ponder.tasks.base import describe_knobs, validate_config

K = TypeVar("K", bound=type)


class Registry(Generic[K]):
    """name → class, for one extension point (``what``: "ffn", "attention", "router")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._classes: dict[str, K] = {}

    def register(self, cls: K) -> K:
        """Class decorator: make ``cls`` available by ``cls.name``."""
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{cls.__name__} has no name")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"{self.what} kind {name!r} registered twice")
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a kind (tests register throw-away kinds)."""
        self._classes.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def cls(self, name: str) -> K:
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} kind {name!r}; kinds: {', '.join(self.names())}") from None

    def knobs(self, name: str, values: dict[str, Any]) -> Any:
        """The validated ``Knobs`` of kind ``name`` from a mapping (ConfigError if bad)."""
        cls = self.cls(name)
        known = {f.name for f in dataclasses.fields(cls.Knobs)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{self.what} kind {name!r} has no knob {unknown[0]!r}; knobs: "
                              f"{', '.join(sorted(known)) or 'none'}")
        try:
            knobs = cls.Knobs(**dict(values))
        except TypeError as exc:
            raise ConfigError(f"{self.what} kind {name!r}: {exc}") from None
        validate_config(knobs)
        return knobs

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(name, causal, knobs with defaults and ranges, paper) per kind, for the CLI."""
        out = []
        for name in self.names():
            cls = self._classes[name]
            out.append((name, "yes" if cls.causal else "no", describe_knobs(cls.Knobs),
                        getattr(cls, "paper", "")))
        return out


@dataclasses.dataclass(frozen=True)
class NoKnobs:
    """A kind without knobs."""


FFNS: Registry = Registry("ffn")
ATTENTIONS: Registry = Registry("attention")
ROUTERS: Registry = Registry("router")
