"""The adapter contract every pruning method follows.

A method declares what it needs and the harness supplies it; a method never evaluates, times or
seeds itself (it uses ``ctx.generator`` and wraps sub-steps in ``ctx.timer.phase``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from reflow.data import Batch
from reflow.errors import ReflowError
from reflow.masks import Masks, prunable_parameters
from reflow.timing import PhaseTimer

#: What a method may ask the harness for.
NEEDS = frozenset({"train_data", "gradients"})


@dataclass
class PruneContext:
    """Everything a method may use; fields a method did not declare in ``needs`` are None."""

    generator: torch.Generator
    device: torch.device
    scope: str = "all"
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    #: ``train_sample(n_batches, batch_size)``: a seeded sample of the train split.
    train_sample: Callable[[int, int], list[Batch]] | None = None
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return prunable_parameters(model, self.scope)

    def require_train_sample(self, method: str) -> Callable[[int, int], list[Batch]]:
        if self.train_sample is None:
            raise ReflowError(f"method {method} needs train data but the harness supplied none")
        return self.train_sample


@dataclass
class PruneResult:
    masks: Masks
    #: Method-reported facts for the result row, e.g. ``grad_samples``.
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoConfig:
    """For methods without options."""


class Method(ABC):
    """A one-shot pruning method: select a mask, optionally update surviving weights."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    updates_weights: ClassVar[bool] = False
    Config: ClassVar[type] = NoConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        """Masks for ``sparsity``; only methods with ``updates_weights`` may change weights."""


def make_config(config_cls: type, overrides: Mapping[str, str]) -> Any:
    """Build a frozen config from string overrides, converting by each field's default type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise ReflowError(f"{config_cls.__qualname__} has no option {key!r}; options: {valid}")
        default = fields[key].default
        try:
            values[key] = _convert(raw, default)
        except ValueError as exc:
            raise ReflowError(f"option {key}={raw!r}: {exc}") from exc
    return config_cls(**values)


def _convert(raw: str, default: Any) -> Any:
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
    """One line per option: name, default and help text (from the field's metadata)."""
    return [
        f"{f.name}={f.default!r}  {f.metadata.get('help', '')}".rstrip()
        for f in dataclasses.fields(config_cls)
    ]


def option(default: Any, help: str) -> Any:
    """A config field with help text, shown by ``reflow list``."""
    return field(default=default, metadata={"help": help})
