"""Random pruning: the floor every method must beat."""

from __future__ import annotations

import torch
from reflow.baselines.base import Method, PruneContext, PruneResult
from reflow.baselines.registry import register
from torch import nn


@register
class RandomPruning(Method):
    name = "random"
    summary = "uniformly random weights across all prunable layers (seeded)"
    seeded = "the random mask"
    supports_pattern = True

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        with ctx.timer.phase("solve"):
            scores = {
                name: torch.rand(p.shape, generator=ctx.generator).to(p.device)
                for name, p in ctx.prunable(model).items()
            }
            return PruneResult(ctx.select(scores, sparsity))
