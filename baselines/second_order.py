"""Second-order baselines on the block-diagonal empirical Fisher: OBD, WoodFisher selection
(``wf_s``), WoodFisher with the OBS update (``wf_u``), and magnitude masks with the OBS update
(``mp_u``, the paper's MP-U). Their sub-steps are timed as ``collect`` (gradients and Fisher),
``inverse``, ``solve`` (selection) and ``update``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.fisher import (
    INVERSES,
    BlockFisher,
    BlockLayout,
    obs_statistic,
    obs_update_exact,
    obs_update_woodfisher,
)
from reflow.baselines.gradients import GradientConfig, per_sample_gradients
from reflow.baselines.registry import register
from torch import nn

from reflow.masks import Masks

UPDATES = ("exact", "woodfisher")


@dataclass(frozen=True)
class FisherConfig(GradientConfig):
    block_size: int = option(
        128, "B: weights per Fisher block (blocks never cross layers)", minimum=1
    )
    inverse: str = option(
        "direct", "block inverse: direct (batched Cholesky) or woodbury", choices=INVERSES
    )
    update: str = option(
        "exact", "OBS update: exact (multi-weight) or woodfisher (sum of singles)", choices=UPDATES
    )
    update_scale: float = option(1.0, "scale of the woodfisher-form update")

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass(frozen=True)
class ObdConfig(FisherConfig):
    """OBD uses the Fisher diagonal only: blocks of one weight."""

    block_size: int = option(
        1, "OBD is the diagonal approximation: blocks of one weight", fixed=True
    )


def fisher_inverse(
    model: nn.Module, ctx: PruneContext, config: FisherConfig, name: str
) -> tuple[BlockLayout, torch.Tensor]:
    """Collect N masked gradients and return the layout and F⁻¹ of every block."""
    params = ctx.prunable(model)
    layout = BlockLayout.of(params, config.block_size)
    sample = ctx.require_train_sample(name)
    with ctx.timer.phase("collect"):
        ((x, y),) = sample(1, config.num_grads * config.grad_batch_size)
        x, y = x.to(ctx.device), y.to(ctx.device)
        fisher = BlockFisher(
            layout,
            config.num_grads,
            config.damp,
            config.inverse,
            ctx.device,
            memory_limit_gb=config.memory_limit_gb,
        )
        alive = {n: (p.detach() != 0) for n, p in params.items()}
        for grads in per_sample_gradients(
            model, params, x, y, ctx.loss_fn, config.grad_batch_size, config.chunk
        ):
            fisher.add_batch({n: g * alive[n] for n, g in grads.items()})
    with ctx.timer.phase("inverse"):
        inverse = fisher.inverse()
        fisher.free()
    return layout, inverse


def obs_scores(
    layout: BlockLayout, weights: torch.Tensor, inverse: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The OBS statistic per layer; padding slots never reach a layer's tensor."""
    return layout.from_blocks(obs_statistic(weights, inverse))


def apply_obs_update(
    model: nn.Module,
    ctx: PruneContext,
    layout: BlockLayout,
    weights: torch.Tensor,
    inverse: torch.Tensor,
    masks: Masks,
    config: FisherConfig,
) -> None:
    """Move surviving weights by the OBS update for the pruned set of each block."""
    pruned = ~layout.to_blocks(
        {n: m.to(weights.device) for n, m in masks.items()}
    ) & ~layout.padding(weights.device)
    if config.update == "exact":
        delta = obs_update_exact(weights, inverse, pruned)
    else:
        delta = obs_update_woodfisher(weights, inverse, pruned, config.update_scale)
    params = ctx.prunable(model)
    with torch.no_grad():
        for name, d in layout.from_blocks(delta).items():
            params[name].add_(d.to(params[name].dtype))


class _FisherMethod(Method):
    needs = frozenset({"train_data"})
    supports_pattern = True
    Config = FisherConfig
    #: How the mask is chosen: "obs" (statistic) or "magnitude".
    selection = "obs"

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        layout, inverse = fisher_inverse(model, ctx, self.config, self.name)
        params = ctx.prunable(model)
        weights = layout.to_blocks({n: p.detach() for n, p in params.items()}).to(inverse.dtype)
        with ctx.timer.phase("solve"):
            if self.selection == "obs":
                scores = obs_scores(layout, weights, inverse)
            else:
                scores = {n: p.detach().abs() for n, p in params.items()}
            masks = ctx.select(scores, sparsity)
        if self.updates_weights:
            with ctx.timer.phase("update"):
                apply_obs_update(model, ctx, layout, weights, inverse, masks, self.config)
        info = {
            "grad_samples": self.config.num_grads * self.config.grad_batch_size,
            "fisher_blocks": layout.num_blocks,
        }
        return PruneResult(masks, info)


@register
class OptimalBrainDamage(_FisherMethod):
    name = "obd"
    summary = "OBD: saliency ½ F_qq w_q² with the empirical Fisher diagonal; no update"
    Config = ObdConfig


@register
class WoodFisherSelection(_FisherMethod):
    selection_family = "woodfisher"
    name = "wf_s"
    summary = "WoodFisher selection: w_q² / (2 [F⁻¹]_qq) per block, global threshold; no update"


@register
class WoodFisherUpdate(_FisherMethod):
    selection_family = "woodfisher"
    name = "wf_u"
    summary = "WoodFisher selection + OBS update of surviving weights (exact multi-weight default)"
    updates_weights = True


@register
class MagnitudeObsUpdate(_FisherMethod):
    name = "mp_u"
    summary = "global magnitude mask + exact OBS update (the paper's MP-U)"
    updates_weights = True
    selection = "magnitude"
