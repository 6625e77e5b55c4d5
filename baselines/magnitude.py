"""Magnitude pruning: global (``mp``, the paper's MP) and layer-wise uniform (``mp_layer``)."""

from __future__ import annotations

from reflow.baselines.base import Method, PruneContext, PruneResult
from reflow.baselines.registry import register
from torch import nn

from reflow.masks import layerwise_masks


def magnitude_scores(model: nn.Module, ctx: PruneContext) -> dict:
    return {name: p.detach().abs() for name, p in ctx.prunable(model).items()}


@register
class GlobalMagnitude(Method):
    name = "mp"
    summary = "global magnitude: one |w| threshold across all prunable layers"
    supports_pattern = True

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        with ctx.timer.phase("solve"):
            return PruneResult(ctx.select(magnitude_scores(model, ctx), sparsity))


@register
class LayerwiseMagnitude(Method):
    name = "mp_layer"
    summary = "layer-wise magnitude: every prunable layer pruned to the same sparsity"

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        with ctx.timer.phase("solve"):
            return PruneResult(layerwise_masks(magnitude_scores(model, ctx), sparsity))
