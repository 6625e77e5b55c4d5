"""The one exception type users see: a message that says what was wrong and what to do."""

from __future__ import annotations

from collections.abc import Iterable


class ReflowError(Exception):
    """A user-facing error; the CLI prints its message and exits non-zero, without a traceback."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> ReflowError:
    """Error for a name that is not registered, listing the valid ones."""
    names = ", ".join(sorted(valid))
    return ReflowError(f"unknown {kind} {name!r}; valid {kind}s: {names}")
