"""Repairs: steps that can follow any mask, as a registry like the methods.

A repair has a name (the ``repair`` column), a ``Config`` of options, what it needs from the
harness (``calibration`` images, the ``dense_model``) and `Repair.applies_to`, which refuses a
model it cannot repair with one line before any row runs.

====================  ==============================================================  =========
repair                what it does                                                    needs
====================  ==============================================================  =========
none                  nothing
reflow                reset BN statistics, re-estimate as an exact cumulative average  calib.
adabn                 EagleEye adaptive BN: train-mode passes, momentum 0.1, no reset  calib.
bnt                   OBC's BN tuning: reset, then momentum 0.1                        calib.
statcorr              per-channel output mean/std of every norm layer matched to the  calib.,
                      dense model's, folded into γ and β (any norm layer)             dense
reflow+statcorr       REFLOW, then statistics correction (a declared composite)       both
====================  ==============================================================  =========
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from reflow.biascorr import correct_bias
from reflow.data import Batch
from reflow.norms import batchnorm_layers, describe_norms, has_affine, norm_layers
from reflow.options import NoConfig, check, option
from reflow.recalibrate import recalibrate_bn, select_layers
from reflow.registry import Registry, missing_requirements
from reflow.statcorr import correct_statistics


@dataclass
class RepairContext:
    """What the harness supplies; fields a repair did not declare in ``needs`` are None."""

    #: Draws the seeded calibration batches (``--calib-batches`` × ``--calib-batch-size``).
    calibration: Callable[[], list[Batch]] | None = None
    dense_model: nn.Module | None = None
    #: ``all``, ``first:K`` or ``last:K`` of the layers a repair works on.
    layers: str = "all"
    progress: bool = False


class Repair(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    Config: ClassVar[type] = NoConfig
    #: Optional packages the repair needs (module names), and the extra that installs them.
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def applies_to(self, model: nn.Module) -> str | None:
        """None when this repair can work on ``model``, else the reason it cannot: by default,
        the optional packages it requires that are missing."""
        return missing_requirements(f"repair {self.name}", self.requires, self.extra)

    def layer_count(self, model: nn.Module) -> int | None:
        """How many layers ``--recalibrate-layers`` selects among (None: the setting is unused)."""
        return None

    @abstractmethod
    def repair(self, model: nn.Module, ctx: RepairContext) -> int:
        """Repair ``model`` in place; return the number of calibration samples used."""


REPAIRS: Registry[type[Repair]] = Registry("repair")
register = REPAIRS.register


def list_repairs() -> list[str]:
    return REPAIRS.names()


def get_repair(name: str, options: dict[str, str] | None = None) -> Repair:
    return REPAIRS.build(name, options)


@register
class NoRepair(Repair):
    name = "none"
    summary = "no repair"

    def repair(self, model: nn.Module, ctx: RepairContext) -> int:
        return 0


def without_batchnorm(model: nn.Module, what: str) -> str | None:
    """The refusal of a repair that works on BatchNorm running statistics (``what`` it does),
    for a model that has none; None when it has some."""
    if batchnorm_layers(model):
        return None
    return (
        f"{what}, but {type(model).__name__} has none ({describe_norms(model)}); use --repair "
        "none or statcorr"
    )


class BatchNormRecalibration(Repair):
    """Re-estimate BatchNorm running statistics on calibration batches; no weight changes."""

    needs = frozenset({"calibration"})
    reset: ClassVar[bool]
    momentum: ClassVar[float | None]
    #: A running statistic kept from the checkpoint (``running_mean`` or ``running_var``), so
    #: only the other is re-estimated: the mean-versus-variance ablation of signal collapse.
    keeps: ClassVar[str] = ""

    def applies_to(self, model: nn.Module) -> str | None:
        return without_batchnorm(model, f"{self.name} re-estimates BatchNorm running statistics")

    def layer_count(self, model: nn.Module) -> int | None:
        return len(batchnorm_layers(model))

    def repair(self, model: nn.Module, ctx: RepairContext) -> int:
        kept = {}
        if self.keeps:
            kept = {n: getattr(bn, self.keeps).clone() for n, bn in batchnorm_layers(model).items()}
        samples = recalibrate_bn(
            model,
            ctx.calibration(),
            reset=self.reset,
            momentum=self.momentum,
            layers=ctx.layers,
            progress=ctx.progress,
        )
        for name, bn in batchnorm_layers(model).items():
            if name in kept:
                getattr(bn, self.keeps).copy_(kept[name])
        return samples


@register
class Reflow(BatchNormRecalibration):
    name = "reflow"
    summary = "reset BN statistics, re-estimate as exact cumulative average (REFLOW)"
    reset, momentum = True, None


@register
class ReflowMean(BatchNormRecalibration):
    name = "reflow_mean"
    summary = "REFLOW for the running means only; running variances kept from the checkpoint"
    reset, momentum, keeps = True, None, "running_var"


@register
class ReflowVar(BatchNormRecalibration):
    name = "reflow_var"
    summary = "REFLOW for the running variances only; running means kept from the checkpoint"
    reset, momentum, keeps = True, None, "running_mean"


@register
class AdaBN(BatchNormRecalibration):
    name = "adabn"
    summary = "EagleEye adaptive BN: train-mode passes, momentum 0.1, no reset"
    reset, momentum = False, 0.1


@register
class BNTuning(BatchNormRecalibration):
    name = "bnt"
    summary = "OBC BN tuning: reset, then momentum 0.1"
    reset, momentum = True, 0.1


@dataclass(frozen=True)
class StatCorrConfig:
    min_std: float = option(
        1e-6, "channels whose pruned output std is below this get only their mean corrected"
    )


@register
class StatCorr(Repair):
    name = "statcorr"
    summary = "match each norm layer's per-channel output mean/std to the dense model (γ, β only)"
    needs = frozenset({"calibration", "dense_model"})
    Config = StatCorrConfig

    def applies_to(self, model: nn.Module) -> str | None:
        if any(has_affine(layer) for layer in norm_layers(model).values()):
            return None
        return (
            f"statcorr folds its correction into normalisation layers' affine parameters, but "
            f"{type(model).__name__} has none with γ and β ({describe_norms(model)})"
        )

    def layer_count(self, model: nn.Module) -> int | None:
        return len(norm_layers(model))

    def repair(self, model: nn.Module, ctx: RepairContext) -> int:
        batches = ctx.calibration()
        names = select_layers(list(norm_layers(model)), ctx.layers)
        correct_statistics(model, ctx.dense_model, batches, names, self.config.min_std)
        return sum(len(x) for x, _ in batches)


@dataclass(frozen=True)
class BiasCorrConfig:
    source: str = option(
        "analytic",
        "E[x] of each pruned layer's input: analytic (the previous BN's β, γ through ReLU, no "
        "data) or empirical (the dense model's input means on the calibration draw)",
        choices=("analytic", "empirical"),
    )

    def __post_init__(self) -> None:
        check(self)


@register
class BiasCorrection(Repair):
    name = "biascorr"
    summary = (
        "bias correction (Nagel et al. 2019): each BN's running mean shifted by (Ŵ − W)·E[x]; "
        "analytic needs no data, empirical a calibration draw"
    )
    needs = frozenset({"dense_model"})
    Config = BiasCorrConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if self.config.source == "empirical":  # this configuration reads calibration images
            self.needs = frozenset({"calibration", "dense_model"})

    def applies_to(self, model: nn.Module) -> str | None:
        return without_batchnorm(model, "biascorr shifts BatchNorm running means")

    def repair(self, model: nn.Module, ctx: RepairContext) -> int:
        batches = ctx.calibration() if "calibration" in self.needs else None
        correct_bias(model, ctx.dense_model, self.config.source, batches)
        return sum(len(x) for x, _ in batches) if batches else 0


class CompositeRepair(Repair):
    """Repairs run one after another on the same calibration batches. Its ``Config`` holds the
    options of its steps (``--set reflow+statcorr.min_std=…``), each passed to the steps whose
    own ``Config`` has it."""

    parts: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.steps = []
        for part in self.parts:
            cls = REPAIRS.get(part)
            names = {f.name for f in dataclasses.fields(cls.Config)}
            mine = {k: v for k, v in dataclasses.asdict(self.config).items() if k in names}
            self.steps.append(cls(cls.Config(**mine)))

    def applies_to(self, model: nn.Module) -> str | None:
        return next((r for r in (s.applies_to(model) for s in self.steps) if r), None)

    def layer_count(self, model: nn.Module) -> int | None:
        counts = [c for c in (s.layer_count(model) for s in self.steps) if c is not None]
        return min(counts) if counts else None

    def repair(self, model: nn.Module, ctx: RepairContext) -> int:
        drawn: list[list[Batch]] = []

        def once() -> list[Batch]:
            if not drawn:
                drawn.append(ctx.calibration())
            return drawn[0]

        shared = RepairContext(once, ctx.dense_model, ctx.layers, ctx.progress)
        for step in self.steps:
            step.repair(model, shared)
        return sum(len(x) for x, _ in drawn[0]) if drawn else 0


@register
class ReflowThenStatCorr(CompositeRepair):
    name = "reflow+statcorr"
    summary = "REFLOW, then statistics correction on the same calibration images"
    needs = frozenset({"calibration", "dense_model"})
    parts = ("reflow", "statcorr")
    Config = StatCorrConfig
