"""Bias correction for pruning (Nagel et al. 2019, "Data-Free Quantization", §4.2): pruning a
layer W → Ŵ shifts the expected pre-BatchNorm output by (Ŵ − W)·E[x]; adding that shift to the
following BN's running mean restores the BN output's mean, with no weight changed.

E[x] is per input channel (taken as the same at every kernel tap; zero padding at the borders is
ignored, as Nagel et al. do) and comes from one of two sources:

- **analytic** — no data at all: when the layer's input is ReLU(BN(·)), the previous BN's output
  is taken as Gaussian N(β, γ²) per channel, and E[ReLU(y)] = β Φ(β/|γ|) + |γ| φ(β/|γ|). Layers
  whose input is not a BN followed by ReLU (the first conv reading the image, a block's first
  conv reading the residual sum) are left uncorrected and counted.
- **empirical** — the mean of the layer's input in the *dense* model over the calibration draw.

The (layer → BN) and (BN → ReLU → layer) links are read from a torch.fx trace of the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reflow.data import Batch
from reflow.errors import ReflowError
from reflow.statcorr import output_moments

WEIGHTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Link:
    """A weighted layer whose output feeds a BatchNorm directly, and (when its input is
    ReLU(BN(·))) that upstream BN."""

    layer: str
    bn: str
    upstream_bn: str | None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    if node.op == "call_method":
        return node.target == "relu"
    return node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)


def links(model: nn.Module) -> list[Link]:
    """Every (weighted layer → BatchNorm) pair of ``model``, with the upstream BN where the
    layer reads ReLU(BN(·)); raises when the model cannot be traced."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds on dynamic control flow
        raise ReflowError(
            f"biascorr traces the model to find layer → BatchNorm pairs, and torch.fx cannot "
            f"trace {type(model).__name__} ({type(exc).__name__}); use reflow or statcorr"
        ) from None
    modules = dict(model.named_modules())
    found = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(
            modules.get(node.target), nn.modules.batchnorm._BatchNorm
        ):
            continue
        source = node.args[0]
        if not (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), WEIGHTED)
            and len(source.users) == 1
        ):
            continue
        upstream = None
        feed = source.args[0]
        if isinstance(feed, fx.Node) and _is_relu(feed, modules):
            before = feed.args[0]
            if (
                isinstance(before, fx.Node)
                and before.op == "call_module"
                and isinstance(modules.get(before.target), nn.modules.batchnorm._BatchNorm)
            ):
                upstream = before.target
        found.append(Link(source.target, node.target, upstream))
    return found


def relu_gaussian_mean(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[ReLU(y)] for y ~ N(mean, std²), per element: μ Φ(μ/σ) + σ φ(μ/σ) (σ = 0: ReLU(μ))."""
    std = std.abs()
    safe = std.clamp(min=1e-12)
    z = mean / safe
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return torch.where(std > 0, mean * cdf + std * pdf, mean.clamp(min=0))


def output_shift(dense: nn.Module, pruned: nn.Module, input_mean: torch.Tensor) -> torch.Tensor:
    """(Ŵ − W)·E[x] per output channel, E[x] per input channel (the same at every tap)."""
    delta = (pruned.weight - dense.weight).detach()
    if isinstance(dense, nn.Linear):
        return delta @ input_mean
    groups = dense.groups
    out_channels = delta.shape[0]
    per_tap = delta.sum(dim=(2, 3))  # (O, I / groups)
    expanded = input_mean.view(groups, -1).repeat_interleave(out_channels // groups, dim=0)
    return (per_tap * expanded).sum(dim=1)


@torch.no_grad()
def correct_bias(
    pruned: nn.Module,
    dense: nn.Module,
    source: str = "analytic",
    batches: list[Batch] | None = None,
) -> dict[str, int]:
    """Shift each BN's running mean after a pruned layer by (Ŵ − W)·E[x]; returns counts of
    ``corrected`` and ``skipped`` (no E[x] from ``source``) layers."""
    dense_modules = dict(dense.named_modules())
    pruned_modules = dict(pruned.named_modules())
    found = [link for link in links(dense) if link.layer in pruned_modules]
    changed = [
        link
        for link in found
        if not torch.equal(pruned_modules[link.layer].weight, dense_modules[link.layer].weight)
    ]
    if source == "empirical":
        if batches is None:
            raise ReflowError("empirical bias correction needs calibration batches")
        device = next(dense.parameters()).device
        names = [link.layer for link in changed]
        moments = output_moments(dense, batches, names, device, inputs=True)
        means = {n: m.mean.float() for n, m in moments.items() if m.mean is not None}
    else:
        means = {}
        for link in changed:
            if link.upstream_bn is not None:
                bn = dense_modules[link.upstream_bn]
                beta = bn.bias.detach() if bn.affine else torch.zeros(bn.num_features)
                gamma = bn.weight.detach() if bn.affine else torch.ones(bn.num_features)
                means[link.layer] = relu_gaussian_mean(beta, gamma)
    corrected = 0
    for link in changed:
        if link.layer not in means:
            continue
        shift = output_shift(
            dense_modules[link.layer], pruned_modules[link.layer], means[link.layer]
        )
        pruned_modules[link.bn].running_mean.add_(shift.to(pruned_modules[link.bn].running_mean))
        corrected += 1
    return {"corrected": corrected, "skipped": len(changed) - corrected}
