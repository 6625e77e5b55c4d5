"""Normalisation layers of any kind (BatchNorm, GroupNorm/LayerNorm, InstanceNorm): where they are
in a model, which keep running statistics, and which axis holds their channels.

Probes and statistics correction work on all of them; REFLOW-style recalibration only on the
BatchNorm layers, the ones with running statistics to re-estimate.
"""

from __future__ import annotations

import torch
from torch import nn

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every normalisation layer by module name, in definition (= forward, for our zoo) order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, NORM_TYPES)}


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that track running statistics (the ones REFLOW re-estimates)."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


def describe_norms(model: nn.Module) -> str:
    """``"19 GroupNorm"``-style summary of the normalisation layers, for error messages."""
    counts: dict[str, int] = {}
    for layer in norm_layers(model).values():
        counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no normalisation layer"


#: Set by channel pruning on a normalisation layer it shrank: the dense channels the layer kept,
#: so a repair that compares it with the dense model (statcorr) pairs the right channels.
KEPT_CHANNELS = "kept_channels"


def mark_kept_channels(layer: nn.Module, removed: set[int]) -> None:
    """Record on ``layer`` (already shrunk) which dense channels survived ``removed``."""
    count = len(removed) + int(layer.weight.shape[0])
    setattr(layer, KEPT_CHANNELS, torch.tensor([i for i in range(count) if i not in removed]))


def dense_channel_values(layer: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` of the dense layer, at the channels ``layer`` kept."""
    kept = getattr(layer, KEPT_CHANNELS, None)
    return values if kept is None else values[kept.to(values.device)]


def has_affine(layer: nn.Module) -> bool:
    return getattr(layer, "weight", None) is not None and getattr(layer, "bias", None) is not None


def reduce_dims(layer: nn.Module, output: torch.Tensor) -> tuple[int, ...]:
    """Axes to average over for per-channel statistics of ``layer``'s output.

    Channels sit on axis 1 for BatchNorm, GroupNorm and InstanceNorm; a LayerNorm's affine
    parameters cover its trailing ``normalized_shape`` axes, so those are the "channels".
    """
    if isinstance(layer, nn.LayerNorm):
        return tuple(range(output.dim() - len(layer.normalized_shape)))
    return (0, *range(2, output.dim()))


def channel_view(layer: nn.Module, values: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` shaped to broadcast against ``output``."""
    if isinstance(layer, nn.LayerNorm):
        return values.reshape(layer.normalized_shape)
    return values.reshape(1, -1, *([1] * (output.dim() - 2)))
