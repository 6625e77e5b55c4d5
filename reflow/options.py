"""Options of every registered thing (methods, repairs, executors): a frozen dataclass per class,
each field with a default and help text, built from ``--set NAME.OPTION=VALUE`` strings.

Identity follows OpenLTH's rule: only values that differ from their defaults describe a result,
so a new option that defaults to "no effect" leaves every stored row's identity unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reflow.errors import ReflowError


@dataclass(frozen=True)
class NoConfig:
    """For things without options."""


def option(
    default: Any,
    help: str,
    fixed: bool = False,
    choices: Iterable[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A config field with help text (shown by ``reflow list -v`` and in ``--help``).

    ``fixed`` marks an option that a subclass pins (e.g. OBD's block size of 1): it is listed but
    cannot be set. ``choices``, ``minimum`` and ``maximum`` declare the valid values; `check`
    enforces them (a config calls it from ``__post_init__``) with one line naming the option.
    """
    metadata = {"help": help, "fixed": fixed, "choices": tuple(choices) if choices else None}
    metadata |= {"minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=metadata)


def check(config: Any) -> None:
    """Enforce every field's declared type, choices and bounds: a config of the wrong type (a
    string where a number belongs, a float seed) or out of range is one clear line
    (`make_config` puts the owner's name in front)."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), _declared(type(config), f)
        if "help" not in meta:
            continue
        if not _same_kind(value, f.default):
            raise ReflowError(
                f"{f.name} takes {_kind(f.default)}, got {value!r} ({type(value).__name__})"
            )
        if meta.get("choices") and value not in meta["choices"]:
            raise ReflowError(
                f"{f.name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}"
            )
        low, high = meta.get("minimum"), meta.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(
                b
                for b in (
                    f"at least {low}" if low is not None else "",
                    f"at most {high}" if high is not None else "",
                )
                if b
            )
            raise ReflowError(f"{f.name} must be {bounds}, got {value!r}")


def _declared(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    """A field's metadata, with the choices and bounds a base class declared for the same
    option when a subclass redefines it only to change its default or help (OBC's ``damp``)."""
    meta = dict(f.metadata)
    for base in cls.__mro__[1:]:
        inherited = getattr(base, "__dataclass_fields__", {}).get(f.name)
        if inherited is None:
            continue
        for key in ("choices", "minimum", "maximum"):
            if meta.get(key) is None and inherited.metadata.get(key) is not None:
                meta[key] = inherited.metadata[key]
    return meta


def _kind(default: object) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        type(default), type(default).__name__
    )


def _same_kind(value: object, default: object) -> bool:
    """A value has its default's type (an int is no bool, a bool no int; an int is a number)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if default is None:
        return True
    return isinstance(value, type(default))


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
    try:
        return config_cls(**values)
    except ReflowError as exc:
        raise ReflowError(f"{owner}: {exc}" if owner else str(exc)) from None


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
        meta = _declared(config_cls, f)
        fixed = " (fixed)" if meta.get("fixed") else ""
        valid = []
        if meta.get("choices"):
            valid.append("one of " + ", ".join(map(str, meta["choices"])))
        if meta.get("minimum") is not None:
            valid.append(f"≥ {meta['minimum']}")
        if meta.get("maximum") is not None:
            valid.append(f"≤ {meta['maximum']}")
        declared = f" [{'; '.join(valid)}]" if valid else ""
        lines.append(f"{f.name}={f.default!r}{fixed}  {meta.get('help', '')}{declared}".rstrip())
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
