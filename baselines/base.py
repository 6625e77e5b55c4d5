"""The adapter contract every pruning method follows.

A method declares what it needs and the harness supplies it; a method never evaluates, times or
seeds itself (it uses ``ctx.generator`` and wraps sub-steps in ``ctx.timer.phase``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from reflow.data import Batch
from reflow.errors import ReflowError
from reflow.masks import Masks, Pattern, global_masks, pattern_masks, prunable_parameters
from reflow.memory import MemoryNeed
from reflow.options import NoConfig, describe_config, make_config, option
from reflow.registry import missing_requirements
from reflow.timing import PhaseTimer

#: What a method may ask the harness for: train data (a seeded sample of the train split, for
#: the gradients it computes itself) and activations (a seeded calibration sample for capturing
#: layer inputs with forward hooks).
NEEDS = frozenset({"train_data", "activations"})

__all__ = [
    "NEEDS",
    "Method",
    "NoConfig",
    "PruneContext",
    "PruneResult",
    "describe_config",
    "make_config",
    "option",
]


@dataclass
class PruneContext:
    """Everything a method may use; fields a method did not declare in ``needs`` are None."""

    generator: torch.Generator
    device: torch.device
    scope: str = "all"
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    #: ``train_sample(n_batches, batch_size)``: a seeded sample of the train split (gradients).
    train_sample: Callable[[int, int], list[Batch]] | None = None
    #: ``activation_sample(n_batches, batch_size)``: calibration images for layer inputs, a seeded
    #: stream of its own (never the one REFLOW calibrates on).
    activation_sample: Callable[[int, int], list[Batch]] | None = None
    #: N:M pattern every score-based mask must follow, or None.
    pattern: Pattern | None = None
    #: Shape of one input image (C, H, W), e.g. for tracing the network.
    input_shape: tuple[int, ...] = (3, 32, 32)
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return prunable_parameters(model, self.scope)

    def require_train_sample(self, method: str) -> Callable[[int, int], list[Batch]]:
        if self.train_sample is None:
            raise ReflowError(f"method {method} needs train data but the harness supplied none")
        return self.train_sample

    def require_activation_sample(self, method: str) -> Callable[[int, int], list[Batch]]:
        if self.activation_sample is None:
            raise ReflowError(
                f"method {method} needs calibration activations but the harness supplied none"
            )
        return self.activation_sample

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> Masks:
        """Keep the highest scores: globally, or N of every M when a pattern is set."""
        if self.pattern is not None:
            return pattern_masks(scores, self.pattern)
        return global_masks(scores, sparsity)


@dataclass
class PruneResult:
    masks: Masks
    #: Method-reported facts for the result row, e.g. ``grad_samples``.
    info: dict[str, Any] = field(default_factory=dict)
    #: A physically smaller model replacing the input (structured methods), else None. Its masks
    #: are still given in the input model's coordinates, for sparsity accounting.
    model: nn.Module | None = None
    #: Per-layer facts for the ``layers`` table (e.g. reconstruction errors), by weight name.
    layer_info: dict[str, dict[str, Any]] = field(default_factory=dict)


class Method(ABC):
    """A one-shot pruning method: select a mask, optionally update surviving weights."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    updates_weights: ClassVar[bool] = False
    #: Whether the mask comes from per-weight scores, so an N:M pattern can constrain it.
    supports_pattern: ClassVar[bool] = False
    #: Methods of one family (a "-S" selection and its "-U" update, e.g. chita_s and chita_u)
    #: run the same search: the harness runs it once, as the family's weight-updating member,
    #: and gives the "-S" member that search's mask on the original weights.
    selection_family: ClassVar[str | None] = None
    #: Whether it removes whole channels (a smaller network): the sparsity is then met only to
    #: within a channel's worth of weights.
    structured: ClassVar[bool] = False
    Config: ClassVar[type] = NoConfig
    summary: ClassVar[str] = ""
    #: What the method draws from ``ctx.generator`` itself (e.g. "the random mask"), beyond the
    #: data draws its ``needs`` imply; "" when it draws nothing (`reflow.seeds`).
    seeded: ClassVar[str] = ""
    #: Optional packages the method needs (module names), and the extra that installs them.
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def applies_to(self, model: nn.Module) -> str | None:
        """None when the method can prune ``model``, else the reason it cannot (one line): by
        default, the optional packages it requires that are missing."""
        return missing_requirements(f"method {self.name}", self.requires, self.extra)

    def memory_needed(self, model: nn.Module, scope: str) -> MemoryNeed | None:
        """The largest allocation pruning ``model``'s ``scope`` weights makes, from shapes and
        options alone (None: nothing large), so a row that cannot fit is refused before any row
        of a sweep runs. ``model`` may be an unweighted build."""
        return None

    @abstractmethod
    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        """Masks for ``sparsity``; only methods with ``updates_weights`` may change weights."""

    def adopt_search(self, result: PruneResult) -> PruneResult:
        """The facts of its family's shared search as this member reports them."""
        return result
