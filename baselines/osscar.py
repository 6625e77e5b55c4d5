"""OSSCAR (Meng et al., ICML 2024, "OSSCAR: One-Shot Structured Pruning in Vision and Language
Models with Combinatorial Optimization"): remove whole channels so that the layer reading them,
refit by least squares on what is left, reproduces its dense output; a smaller network, no
gradient, no fine-tuning.

Each free channel group of the network (Torch-Pruning's dependency graph: a producer's output
channels with everything coupled to them) has one *consumer*, the dense conv or linear layer that
reads those channels as inputs (ResNet: a block's ``conv2`` reading ``conv1``'s outputs through
BN; MobileNet: the next pointwise conv reading them through BN and the depthwise conv). Groups are
taken in the consumers' execution order with sequential inputs (the consumer's inputs come from
the network already pruned before it; its target is the dense weight on those inputs, as
SparseGPT and the reference's ``XtY = XtX B``). For each, with XᵀX damped by ``lambda2`` times
its mean diagonal, the greedy backward elimination and the swap local search of
`reflow.baselines.osscar_solver` choose the kept channels, and the consumer gets the exact
least-squares weights on them. Then the groups are removed physically (the producer's filters,
the norm channels, depthwise channels, the consumer's input columns).

Sparsity is the share of the scope's prunable weights removed, as for ``l1_channel``: every group
loses the same share of its channels (at most ``max_layer_ratio``), the share that comes closest
to the target. What stays unpruned is as for the other structured methods (the classifier's
outputs, layers outside the scope, the residual stream of option-A ResNets); a group whose
channels feed more than one dense layer (a residual stream with conv shortcuts) is skipped and
counted in ``osscar_groups_skipped``.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.layerwise import (
    LayerHessian,
    capture,
    exactly,
    execution_order,
    groups_of,
    hessians_need,
    prunable_modules,
    reconstruction_error,
    weight_rows,
)
from reflow.baselines.osscar_solver import greedy_backward, local_search, refit
from reflow.baselines.registry import register
from reflow.baselines.structured import ChannelRemoval, ignored_layers, mark_removed
from torch import nn

from reflow.errors import ReflowError
from reflow.masks import prunable_parameters, sparsity_of
from reflow.memory import MemoryNeed
from reflow.options import check


@dataclass(frozen=True)
class OSSCARConfig:
    samples: int = option(1024, "calibration images (their own seeded stream)", minimum=1)
    batch_size: int = option(128, "calibration images per forward pass", minimum=1)
    lambda2: float = option(
        1e-2, "ridge term: share of XᵀX's mean diagonal added to it (reference: 1e-2)", minimum=0.0
    )
    local_iter: int = option(
        20, "local-search iterations after the greedy elimination (0: greedy only)", minimum=0
    )
    num_swap: int = option(
        100,
        "channels swapped per local-search step at first (at most the smaller of the kept and "
        "removed counts; halved when a swap does not help)",
        minimum=1,
    )
    max_layer_ratio: float = option(0.95, "most of any group's channels removed (none emptied)")

    def __post_init__(self) -> None:
        check(self)
        if not 0 < self.max_layer_ratio < 1:
            raise ReflowError("max_layer_ratio must be in (0, 1)")


@dataclass
class ChannelGroup:
    """One free set of channels: removed from ``root``'s outputs, read by ``consumer``."""

    root: nn.Module
    consumer: nn.Module
    consumer_name: str
    channels: int
    #: What removing the group's first i channels takes: (weight name, its layer, handler, the
    #: dependent indices, aligned with the root's channels).
    reach: list[tuple[str, nn.Module, str, list[int]]]


def _out_channels_fn(dg: object, module: nn.Module) -> object:
    return dg.get_pruner_of_module(module).prune_out_channels


def channel_groups(
    work: nn.Module, params: dict[str, nn.Parameter], example: torch.Tensor
) -> tuple[object, list[ChannelGroup], int]:
    """Torch-Pruning's graph of ``work``, its free channel groups with one dense consumer (in
    execution order), and how many groups were skipped for having none or several."""
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(work, example_inputs=example)
    modules = prunable_modules(work, params)
    name_of = {id(m): n for n, m in modules.items()}
    groups, skipped = [], 0
    for group in dg.get_all_groups(
        ignored_layers=ignored_layers(work, params), root_module_types=(nn.Conv2d, nn.Linear)
    ):
        root = group[0].dep.target.module
        channels = len(group[0].idxs)
        consumers = [
            dep.target.module
            for dep, _ in group
            if dg.is_in_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, nn.Conv2d | nn.Linear)
            and groups_of(dep.target.module) == 1
        ]
        consumer = consumers[0] if len(consumers) == 1 else None
        width = getattr(consumer, "in_channels", getattr(consumer, "in_features", None))
        reach = [
            (
                name_of[id(dep.target.module)],
                dep.target.module,
                dep.handler.__name__,
                [int(i) for i in idxs],
            )
            for dep, idxs in group
            if id(dep.target.module) in name_of
        ]
        if (
            consumer is None
            or id(consumer) not in name_of
            or width != channels
            or any(len(idxs) != channels for *_, idxs in reach)
        ):
            skipped += 1
            continue
        groups.append(ChannelGroup(root, consumer, name_of[id(consumer)], channels, reach))
    order = execution_order(work, modules, example)
    groups.sort(key=lambda g: order.index(g.consumer_name))
    return dg, groups, skipped


def channel_counts(
    groups: list[ChannelGroup], params: dict[str, nn.Parameter], sparsity: float, max_ratio: float
) -> list[int]:
    """Channels removed per group: the same share everywhere (capped), the share whose removed
    weights (counted exactly: a layer losing inputs and outputs loses their product) come
    closest to ``sparsity``."""

    def counts(share: float) -> list[int]:
        return [
            min(round(share * g.channels), math.floor(max_ratio * g.channels), g.channels - 1)
            for g in groups
        ]

    @functools.cache
    def achieved(removed: tuple[int, ...]) -> float:
        masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        for group, count in zip(groups, removed, strict=True):
            for name, layer, handler, idxs in group.reach:
                mark_removed(masks[name], layer, handler, idxs[:count])
        return sparsity_of(masks).sparsity

    def gap(share: float) -> float:
        return achieved(tuple(counts(share))) - sparsity

    best, low, high = 0.0, 0.0, 1.0
    for _ in range(30):
        share = (low + high) / 2
        if abs(gap(share)) < abs(gap(best)):
            best = share
        low, high = (share, high) if gap(share) < 0 else (low, share)
    return counts(best)


def _magnitude_channels(b: torch.Tensor, channels: int, remove: int) -> torch.Tensor:
    """The reference's ``MP`` baseline: remove the channels with the smallest column L1 norm."""
    norms = b.abs().reshape(channels, -1).sum(1)
    pruned = torch.zeros(channels, dtype=torch.bool, device=b.device)
    pruned[norms.argsort()[:remove]] = True
    return pruned


@register
class OSSCAR(Method):
    name = "osscar"
    summary = "OSSCAR (Meng et al. 2024): channels chosen and refit by the layer reconstruction"
    needs = frozenset({"activations"})
    updates_weights = True
    structured = True
    Config = OSSCARConfig
    requires = ("torch_pruning",)
    extra = "structured"

    def memory_needed(self, model: nn.Module, scope: str) -> MemoryNeed:
        modules = prunable_modules(model, prunable_parameters(model, scope))
        return hessians_need(modules.values(), "sequential", torch.float64, False, owner=self.name)

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        cfg = self.config
        sample = ctx.require_activation_sample(self.name)
        work = copy.deepcopy(model)
        params = prunable_parameters(work, ctx.scope)
        example = torch.zeros(1, *ctx.input_shape, device=ctx.device)
        dg, groups, skipped = channel_groups(work, params, example)
        counts = channel_counts(groups, params, sparsity, cfg.max_layer_ratio)
        with ctx.timer.phase("collect"):
            batches = exactly(sample, cfg.samples, cfg.batch_size)
        plans, layer_info = [], {}
        for group, remove in zip(groups, counts, strict=True):
            if remove == 0:
                continue
            lh = LayerHessian(group.consumer, torch.float64)
            with ctx.timer.phase("collect"):
                capture(work, {group.consumer_name: lh}, batches, ctx.device, group.consumer_name)
            with ctx.timer.phase("solve"):
                pruned, facts = self._solve(group, lh.hessian, remove)
            plans.append((group.root, pruned.nonzero().flatten().tolist()))
            layer_info[group.consumer_name] = facts
        with ctx.timer.phase("solve"):
            removal = ChannelRemoval(work, params)
            for root, idxs in plans:
                removal.prune(dg.get_pruning_group(root, _out_channels_fn(dg, root), idxs))
            masks = removal.masks()
        achieved = sparsity_of(masks).sparsity
        info = {
            "activation_samples": cfg.samples,
            "channel_sparsity_gap": achieved - sparsity,
            "osscar_groups_skipped": skipped,
        }
        for key in ("recon_error", "recon_error_magnitude", "recon_error_magnitude_refit"):
            info[key] = sum(f[key] for f in layer_info.values())
        return PruneResult(masks, info, model=work, layer_info=layer_info)

    def _solve(
        self, group: ChannelGroup, hessian: torch.Tensor, remove: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Choose the removed channels of one group and refit its consumer in place; facts:
        the consumer's output error (½‖ΔW X‖²/N summed) beside that of the reference's magnitude
        baselines (column L1 norm, without and with the refit)."""
        cfg = self.config
        rows = weight_rows(group.consumer).double()  # (1, R, d)
        h = hessian.double()
        b = rows[0].T.clone()
        xtx = h[0].clone()
        b[xtx.diagonal() == 0] = 0  # dead inputs, as the reference
        xtx.diagonal().add_(cfg.lambda2 * xtx.diagonal().mean())
        xty = xtx @ b
        channels, ksize = group.channels, b.shape[0] // group.channels
        pruned = greedy_backward(b, xtx, xty, channels, channels - remove)
        pruned, swaps = local_search(xtx, xty, pruned, cfg.local_iter, cfg.num_swap)
        w = refit(xtx, xty, pruned, ksize)
        with torch.no_grad():
            group.consumer.weight.copy_(w.T.reshape(group.consumer.weight.shape))
        magnitude = _magnitude_channels(b, channels, remove)
        columns = magnitude.repeat_interleave(ksize)

        def error(new: torch.Tensor) -> float:
            return reconstruction_error(rows - new.T.unsqueeze(0), h)

        facts = {
            "recon_error": error(w),
            "recon_error_magnitude": error(b * ~columns.unsqueeze(1)),
            "recon_error_magnitude_refit": error(refit(xtx, xty, magnitude, ksize)),
            "osscar_swaps": float(swaps),
            "channels_removed": float(remove),
        }
        return pruned, facts
