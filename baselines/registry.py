"""Registry of pruning methods: a decorator and a dict that refuses duplicate names."""

from __future__ import annotations

from typing import Any

from reflow.baselines.base import Method, make_config

from reflow.errors import ReflowError, unknown_name

_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _METHODS:
        raise ReflowError(f"method name {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return list(_METHODS)


def get_method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS)
    return _METHODS[name]


def get_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """An instance of method ``name`` with string ``options`` applied to its Config."""
    cls = get_method_class(name)
    return cls(make_config(cls.Config, options or {}))
