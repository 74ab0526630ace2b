"""Policy registry: ``get(name, **knobs)``, ``names()``, ``policy_class(name)``, ``register``."""

from __future__ import annotations

from typing import Any

from ponder.errors import ConfigError
from ponder.policies.base import Policy

_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a policy (tests register throw-away policies)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown policy {name!r}; policies: {', '.join(names())}") from None


def get(name: str, **knobs: Any) -> Policy:
    """A fresh, unbound policy with the given knobs (validated; ConfigError if bad)."""
    return policy_class(name)(**knobs)
