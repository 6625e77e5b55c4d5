"""Global magnitude pruning with a Minimum Threshold (Gupta et al., "Is Complex Pruning
Necessary?"): global |w| ranking, but every layer keeps at least a minimum number of weights, so
no layer is emptied at high sparsity (layer collapse). The target is still met exactly by pruning
more elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.magnitude import magnitude_scores
from reflow.baselines.registry import register
from torch import nn

from reflow.masks import global_masks_keeping
from reflow.options import check


@dataclass(frozen=True)
class MinThresholdConfig:
    min_density: float = option(
        0.01, "share of every layer's weights always kept", minimum=0.0, maximum=1.0
    )
    min_count: int = option(
        0, "number of weights every layer always keeps (the larger rule wins)", minimum=0
    )

    def __post_init__(self) -> None:
        check(self)


def minimum_kept(n: int, config: MinThresholdConfig) -> int:
    return min(n, max(config.min_count, math.ceil(config.min_density * n)))


@register
class MinThresholdMagnitude(Method):
    name = "mp_mt"
    summary = "global magnitude with a minimum kept per layer (Gupta et al.)"
    Config = MinThresholdConfig

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        with ctx.timer.phase("solve"):
            scores = magnitude_scores(model, ctx)
            total = sum(s.numel() for s in scores.values())
            protected = {n: minimum_kept(s.numel(), self.config) for n, s in scores.items()}
            kept = sum(protected.values())
            masks = global_masks_keeping(
                scores,
                sparsity,
                protected,
                lambda most: (
                    f"mp_mt cannot reach sparsity {sparsity} while keeping {kept} of {total} "
                    f"weights as layer minimums (at most {most:.4f} is possible); lower "
                    "mp_mt.min_density / mp_mt.min_count or the sparsity"
                ),
            )
        return PruneResult(masks, {"protected_weights": sum(protected.values())})
