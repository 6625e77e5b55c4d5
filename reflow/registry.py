"""One registry shape for every extensible area (methods, repairs, models, executors).

A registry maps names to registered things: classes with a ``name`` class attribute (added with
the `Registry.register` decorator) or entry objects (added with `Registry.add`). Names are unique:
registering one twice is an error, so a plugin cannot silently replace a built-in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from reflow.errors import ReflowError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Named things of one kind, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: register ``cls`` under ``cls.name``."""
        return self.add(cls.name, cls)  # type: ignore[attr-defined]

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ReflowError(f"{self.kind} name {name!r} is registered twice")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        """Unregister ``name`` (for plugins loaded and unloaded by tests)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items)
        return self._items[name]

    def build(self, name: str, options: Mapping[str, str] | None = None) -> Any:
        """An instance of registered class ``name``, its ``Config`` built from string options."""
        from reflow.options import make_config

        cls = self.get(name)
        return cls(make_config(cls.Config, options or {}, owner=name))

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


def missing_requirements(what: str, requires: tuple[str, ...], extra: str) -> str | None:
    """The one line every registered thing (method, repair, executor) gives when the optional
    packages it ``requires`` are not installed, with the extra that installs them; else None."""
    import importlib.util

    missing = [m for m in requires if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"{what} needs {', '.join(missing)}, which is not installed: "
        f'pip install -e ".[{extra}]" (or pip install {" ".join(missing)})'
    )
