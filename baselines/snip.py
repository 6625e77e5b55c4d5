"""SNIP connection sensitivity (Lee et al., 2019): score |∂L/∂w ⊙ w| on the pretrained weights,
global threshold. The gradient is the mean over a configurable number of train batches (the
gradient of the loss on their union), rather than one hard-coded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.registry import register
from torch import nn

from reflow.options import check


@dataclass(frozen=True)
class SnipConfig:
    batches: int = option(10, "train batches the gradient is averaged over", minimum=1)
    batch_size: int = option(128, "samples per batch", minimum=1)

    def __post_init__(self) -> None:
        check(self)


def mean_gradient(
    model: nn.Module, params: dict[str, nn.Parameter], batches: list, ctx: PruneContext
) -> dict[str, torch.Tensor]:
    """Mean loss gradient over ``batches`` in eval mode (BN statistics untouched, no ``.grad``)."""
    was_training = model.training
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    try:
        for x, y in batches:
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss = ctx.loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, list(params.values()))
            for n, g in zip(params, grads, strict=True):
                total[n] += g
    finally:
        model.train(was_training)
    return {n: g / len(batches) for n, g in total.items()}


@register
class Snip(Method):
    name = "snip"
    summary = "SNIP connection sensitivity |dL/dw * w| (Lee et al. 2019), global threshold"
    needs = frozenset({"train_data"})
    supports_pattern = True
    Config = SnipConfig

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        sample = ctx.require_train_sample(self.name)
        params = ctx.prunable(model)
        with ctx.timer.phase("collect"):
            batches = sample(self.config.batches, self.config.batch_size)
            grads = mean_gradient(model, params, batches, ctx)
        with ctx.timer.phase("solve"):
            scores = {n: (grads[n] * p.detach()).abs() for n, p in params.items()}
            masks = ctx.select(scores, sparsity)
        return PruneResult(masks, {"grad_samples": self.config.batches * self.config.batch_size})
