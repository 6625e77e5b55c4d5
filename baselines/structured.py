"""Structured (channel) pruning that physically shrinks the network, on Torch-Pruning's dependency
graph (it couples every layer a removed channel touches: the next conv's inputs, BN channels,
depthwise convs, residual additions).

- ``l1_channel`` (Li et al., 2017): remove the output channels whose filters have the smallest
  L1 norm, the same share in every layer.
- ``bn_scale`` (network slimming, Liu et al., 2017): remove the channels with the smallest |γ| of
  the BatchNorm that follows them, one global threshold.

Sparsity means what it means for unstructured methods: the share of the scope's prunable weights
removed (a channel takes its filter and the next layer's input column with it). The channel ratio
that comes closest to the target is found by bisection; the achieved sparsity is reported. The
result is a smaller model; its masks, in the original model's coordinates, are recorded for
sparsity accounting and Hamming distances. The classifier's outputs are never pruned, nor any
layer outside the scope. Networks whose residual stream goes through a parameter-free channel-
padding shortcut (CIFAR ResNets, option A) keep the width of that stream: only the inner channels
of each block are pruned (Torch-Pruning cannot follow the padding; the standard practice).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.registry import register
from torch import nn

from reflow.cifar_resnet import BasicBlock, PadShortcut
from reflow.errors import ReflowError
from reflow.masks import Masks, prunable_parameters, sparsity_of
from reflow.norms import has_affine, mark_kept_channels, norm_layers
from reflow.options import check


@dataclass(frozen=True)
class StructuredConfig:
    max_layer_ratio: float = option(
        0.95, "most of any layer's channels one step may remove (none is emptied)"
    )
    search_steps: int = option(
        12, "bisection steps for the channel ratio matching the sparsity", minimum=1
    )

    def __post_init__(self) -> None:
        check(self)
        if not 0 < self.max_layer_ratio < 1:
            raise ReflowError("max_layer_ratio must be in (0, 1)")


def ignored_layers(model: nn.Module, scope_params: dict[str, nn.Parameter]) -> list[nn.Module]:
    """Layers whose output channels stay: the classifier, layers outside the scope, and the
    residual-stream convs of networks with channel-padding shortcuts."""
    in_scope = {name.rsplit(".", 1)[0] for name in scope_params}
    ignored = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and n not in in_scope
    ]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        ignored.append(linears[-1])
    if any(isinstance(m, PadShortcut) for m in model.modules()):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        ignored.append(convs[0])  # the stem feeds the stream
        ignored += [b.conv2 for b in model.modules() if isinstance(b, BasicBlock)]
    return list({id(m): m for m in ignored}.values())


class _Structured(Method):
    updates_weights = True
    structured = True
    Config = StructuredConfig
    #: Built on Torch-Pruning's dependency graph.
    requires = ("torch_pruning",)
    extra = "structured"
    global_ranking: bool = False

    def importance(self) -> object:  # a Torch-Pruning importance
        raise NotImplementedError

    def _trial(
        self, model: nn.Module, ratio: float, ctx: PruneContext, example: torch.Tensor
    ) -> tuple[nn.Module, Masks]:
        """A pruned copy at channel ``ratio`` and its masks in the original coordinates."""
        import torch_pruning as tp

        work = copy.deepcopy(model)
        params = prunable_parameters(work, ctx.scope)
        removal = ChannelRemoval(work, params)
        if ratio > 0:
            pruner = tp.pruner.MetaPruner(
                work,
                example,
                importance=self.importance(),
                global_pruning=self.global_ranking,
                pruning_ratio=ratio,
                max_pruning_ratio=self.config.max_layer_ratio,
                ignored_layers=ignored_layers(work, params),
            )
            for group in pruner.step(interactive=True):
                removal.prune(group)
        return work, removal.masks()

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        example = torch.zeros(1, *ctx.input_shape, device=ctx.device)
        best: tuple[float, nn.Module, Masks] | None = None
        low, high = 0.0, self.config.max_layer_ratio
        with ctx.timer.phase("solve"):
            for _ in range(self.config.search_steps):
                ratio = (low + high) / 2
                work, masks = self._trial(model, ratio, ctx, example)
                achieved = sparsity_of(masks).sparsity
                if best is None or abs(achieved - sparsity) < abs(best[0] - sparsity):
                    best = (achieved, work, masks)
                if achieved < sparsity:
                    low = ratio
                else:
                    high = ratio
        achieved, work, masks = best
        return PruneResult(masks, {"channel_sparsity_gap": achieved - sparsity}, model=work)


class ChannelRemoval:
    """Prunes Torch-Pruning groups of one network in place and records what went: the masks of
    the scope's weights in the original coordinates, and the dense channels every shrunk norm
    layer kept. Each layer's channels must be pruned at most once (indices are original)."""

    def __init__(self, work: nn.Module, params: dict[str, nn.Parameter]) -> None:
        self._masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        # keyed by module: Torch-Pruning replaces a weight Parameter each time it prunes it
        modules = dict(work.named_modules())
        self._layers = {id(modules[n.rsplit(".", 1)[0] if "." in n else ""]): n for n in params}
        self._norms = {id(m): m for m in norm_layers(work).values() if has_affine(m)}
        self._removed: dict[int, set[int]] = {}

    def prune(self, group: object) -> None:
        for dep, idxs in group:
            module = dep.target.module
            if id(module) in self._norms:
                self._removed.setdefault(id(module), set()).update(int(i) for i in idxs)
            name = self._layers.get(id(module))
            if name is not None:
                mark_removed(self._masks[name], module, dep.handler.__name__, list(idxs))
        group.prune()

    def masks(self) -> Masks:
        """The masks; marks the norm layers (call once, after the last group)."""
        for key, gone in self._removed.items():
            mark_kept_channels(self._norms[key], gone)
        return self._masks


def mark_removed(mask: torch.Tensor, module: nn.Module, handler: str, idxs: list[int]) -> None:
    """Record removed channels of ``module`` in its weight's mask (original coordinates)."""
    depthwise = isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1
    if handler == "prune_out_channels" or (handler == "prune_in_channels" and depthwise):
        mask[idxs] = False
    elif handler == "prune_in_channels":
        mask[:, idxs] = False


@register
class L1Channel(_Structured):
    name = "l1_channel"
    summary = "filter L1-norm channel pruning (Li et al. 2017), same share per layer; smaller net"

    def importance(self) -> object:
        import torch_pruning as tp

        return tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None)


@register
class BNScale(_Structured):
    name = "bn_scale"
    summary = "network slimming: smallest BN |γ| channels, one global threshold; smaller net"
    global_ranking = True

    def applies_to(self, model: nn.Module) -> str | None:
        if reason := super().applies_to(model):
            return reason
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return "bn_scale ranks channels by BatchNorm |γ|, and this model has no BatchNorm"
        return None

    def importance(self) -> object:
        import torch_pruning as tp

        return tp.importance.BNScaleImportance(normalizer=None)
