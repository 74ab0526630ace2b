"""Task registry: ``get(name, preset=None, **knobs)`` and ``names()``."""

from __future__ import annotations

import dataclasses
from typing import Any

from ponder.errors import ConfigError
from ponder.tasks.base import Task

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_REGISTRY)


def task_class(name: str) -> type[Task]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(names())}") from None


def get(name: str, preset: str | None = None, **knobs: Any) -> Task:
    """Build a task: defaults, then the named preset, then explicit knobs."""
    cls = task_class(name)
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in cls.presets:
            raise ConfigError(f"task {name!r} has no preset {preset!r}; presets: "
                              f"{', '.join(cls.presets) or 'none'}")
        values.update(cls.presets[preset])
    values.update(knobs)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"task {name!r} has no knob {unknown[0]!r}; knobs: {', '.join(sorted(known))}")
    return cls(cls.Config(**values))
