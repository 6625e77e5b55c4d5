"""Options of every registered thing (methods, repairs, executors): a frozen dataclass per class,
each field with a default and help text, built from ``--set NAME.OPTION=VALUE`` strings.

Identity follows OpenLTH's rule: only values that differ from their defaults describe a result,
so a new option that defaults to "no effect" leaves every stored row's identity unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reflow.errors import ReflowError


@dataclass(frozen=True)
class NoConfig:
    """For things without options."""


def option(default: Any, help: str, fixed: bool = False) -> Any:
    """A config field with help text (shown by ``reflow list -v``).

    ``fixed`` marks an option that a subclass pins (e.g. OBD's block size of 1): it is listed but
    cannot be set.
    """
    return field(default=default, metadata={"help": help, "fixed": fixed})


def make_config(config_cls: type, overrides: Mapping[str, str], owner: str = "") -> Any:
    """Build a frozen config from string overrides, converting by each field's default type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    prefix = f"{owner}." if owner else ""
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            valid = ", ".join(n for n, f in fields.items() if not f.metadata.get("fixed")) or "none"
            raise ReflowError(
                f"{owner or config_cls.__qualname__} has no option {key!r}; options: {valid}"
            )
        if fields[key].metadata.get("fixed"):
            raise ReflowError(
                f"{prefix}{key} is fixed at {fields[key].default!r} and cannot be set"
            )
        try:
            values[key] = convert(raw, fields[key].default)
        except ValueError as exc:
            raise ReflowError(f"option {prefix}{key}={raw!r}: {exc}") from exc
    return config_cls(**values)


def convert(raw: Any, default: Any) -> Any:
    """``raw`` (usually a string) as the type of ``default``."""
    if not isinstance(raw, str):
        return raw
    if isinstance(default, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def describe_config(config_cls: type) -> list[str]:
    """One line per option: name, default and help text."""
    lines = []
    for f in dataclasses.fields(config_cls):
        fixed = " (fixed)" if f.metadata.get("fixed") else ""
        lines.append(f"{f.name}={f.default!r}{fixed}  {f.metadata.get('help', '')}".rstrip())
    return lines


def non_default(config: Any) -> dict[str, Any]:
    """The options of ``config`` whose values differ from their defaults (its identity)."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != f.default
    }


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
