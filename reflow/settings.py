"""Harness settings shared by every row of a run (the options that are not a method's or a
repair's own). Non-default values enter a row's identity; defaults never do, so a setting added
later with a default that changes nothing keeps every stored row's identity."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from reflow.errors import ReflowError, unknown_name
from reflow.masks import SCOPES, Pattern

#: How the dense model's BatchNorm statistics are set before pruning.
DENSE_BN = {
    "checkpoint": "as stored in the checkpoint (default)",
    "train": "re-estimated by one train-mode pass over the train split, momentum 0.1, as CHITA's "
    "and M-FAC's ResNet-20 scripts do before pruning",
}


@dataclass(frozen=True)
class Settings:
    """Options shared by every row of a run."""

    scope: str = "all"
    calib_batches: int = 50
    calib_batch_size: int = 128
    #: Augment calibration images as the CIFAR training recipe did (random crop with 4 pixels of
    #: zero padding, horizontal flip), so they match the batches the checkpoint's BN statistics
    #: came from.
    calib_augment: bool = False
    recalibrate_layers: str = "all"
    eval_batch_size: int = 500
    #: Test images evaluated: the first N of the fixed class-mixed order (0: the whole split).
    eval_samples: int = 0
    probe_samples: int = 2000
    dense_bn: str = "checkpoint"
    #: N:M pattern (e.g. "2:4") every score-based mask follows; "" for none.
    pattern: str = ""
    #: Per-method and per-repair option overrides as strings: ``{"wf_u": {"num_grads": "200"}}``.
    options: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if f.name == "options":
                if not isinstance(value, dict):
                    raise ReflowError(f"options must be a table of tables, got {value!r}")
                continue
            if not _same_kind(value, default):
                raise ReflowError(
                    f"setting {f.name} takes {_kind(default)}, got {value!r} "
                    f"({type(value).__name__})"
                )
        for name in ("calib_batches", "calib_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ReflowError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.probe_samples < 0:
            raise ReflowError(f"probe_samples must be >= 0, got {self.probe_samples}")
        if self.eval_samples < 0:
            raise ReflowError(f"eval_samples must be >= 0 (0: all), got {self.eval_samples}")
        if self.scope not in SCOPES:
            raise unknown_name("scope", self.scope, SCOPES)
        if self.dense_bn not in DENSE_BN:
            raise unknown_name("dense_bn setting", self.dense_bn, DENSE_BN)
        where, _, count = self.recalibrate_layers.partition(":")
        if self.recalibrate_layers != "all" and (
            where not in {"first", "last"} or not count.isdigit()
        ):
            raise ReflowError(
                "recalibrate_layers must be 'all', 'first:K' or 'last:K', got "
                f"{self.recalibrate_layers!r}"
            )
        if self.pattern:
            Pattern.parse(self.pattern)

    @property
    def parsed_pattern(self) -> Pattern | None:
        return Pattern.parse(self.pattern) if self.pattern else None


def _kind(default: object) -> str:
    return {bool: "true or false", int: "an integer", str: "a string"}.get(
        type(default), type(default).__name__
    )


def _same_kind(value: object, default: object) -> bool:
    """A setting's value has its default's type (an int is no bool, a bool no int)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    return isinstance(value, type(default))
