"""Registry of pruning methods (the project's one registry shape, `reflow.registry.Registry`)."""

from __future__ import annotations

from typing import Any

from reflow.baselines.base import Method

from reflow.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
register = METHODS.register


def list_methods() -> list[str]:
    return METHODS.names()


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def get_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """An instance of method ``name`` with string ``options`` applied to its Config."""
    return METHODS.build(name, options)
