"""Statistics correction (OBC's final step, Frantar & Alistarh 2022; REPAIR, Jordan et al. 2023):
make every normalisation layer's per-channel output mean and standard deviation in the pruned
model equal the dense model's on calibration images, by folding a per-channel affine map into the
layer's γ and β. No running statistic and no other weight changes, so it works on BatchNorm,
GroupNorm and LayerNorm alike (a model with no running statistics, where REFLOW cannot apply).

One pass over the calibration batches, dense and pruned model in lockstep (REPAIR's single pass,
made exact for an unpruned model): see `correct_statistics`. With a single calibration batch the
match is exact; with several it is close (measured in the tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from reflow.data import Batch
from reflow.norms import channel_view, dense_channel_values, has_affine, norm_layers, reduce_dims


@dataclass
class ChannelMoments:
    """Per-channel count, mean and sum of squared deviations over every batch seen, in float64.

    Each batch costs one fused pass (``torch.var_mean``, numerically stable) in the output's
    precision; batches are merged with Chan et al.'s pairwise update. Casting whole activations
    to float64 and summing x and x² separately cost several passes and made statcorr ~8x a
    forward pass.
    """

    count: int = 0
    mean: torch.Tensor | None = None
    deviations: torch.Tensor | None = None

    def add(self, values: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold in one batch; return that batch's own per-channel (mean, std) in float64."""
        x = values.detach()
        var, mean = torch.var_mean(x if x.dtype == torch.float64 else x.float(), dims, correction=0)
        mean, var, n = mean.double(), var.double(), x.numel() // mean.numel()
        if self.mean is None or self.deviations is None:
            self.mean, self.deviations = mean, var * n
        else:
            total, delta = self.count + n, mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.deviations = self.deviations + var * n + delta.square() * (self.count * n / total)
        self.count += n
        return mean, var.sqrt()

    @property
    def std(self) -> torch.Tensor:
        return (self.deviations / self.count).clamp_min(0).sqrt()


@torch.no_grad()
def output_moments(
    model: nn.Module,
    batches: Iterable[Batch],
    names: list[str],
    device: torch.device,
    inputs: bool = False,
) -> dict[str, ChannelMoments]:
    """Per-channel moments of the outputs (or, with ``inputs``, the first inputs, channels on
    axis 1) of the modules ``names`` over ``batches`` (eval mode)."""
    modules = dict(model.named_modules())
    moments = {n: ChannelMoments() for n in names}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if inputs:
                x = args[0]
                moments[name].add(x, (0, *range(2, x.dim())))
            else:
                moments[name].add(output, reduce_dims(module, output))

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        for x, _ in batches:
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return moments


@torch.no_grad()
def correct_statistics(
    pruned: nn.Module,
    dense: nn.Module,
    batches: list[Batch],
    names: list[str] | None = None,
    min_std: float = 1e-6,
) -> dict[str, float]:
    """Fold the dense model's per-channel output statistics into ``pruned``'s norm layers.

    Dense and pruned models see each batch in lockstep: while the pruned model runs, every
    corrected layer's output is mapped to the dense model's statistics on that same batch, so
    later layers are measured on corrected inputs (and an unpruned model is left exactly as it
    was). The statistics accumulated over all batches are then folded into γ and β. Channels
    whose pruned output is (nearly) constant (σ < ``min_std``) get only their mean moved: no
    finite scale restores a variance that is not there. Returns each layer's mean scale factor.
    """
    device = next(pruned.parameters()).device
    layers, dense_layers = norm_layers(pruned), norm_layers(dense)
    names = [n for n in (names if names is not None else layers) if has_affine(layers[n])]
    target = {n: ChannelMoments() for n in names}
    measured = {n: ChannelMoments() for n in names}
    on_batch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            moments = target[name].add(output, reduce_dims(module, output))
            on_batch[name] = tuple(dense_channel_values(layers[name], t) for t in moments)

        return hook

    def correct(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            mean, std = measured[name].add(output, reduce_dims(module, output))
            want_mean, want_std = on_batch[name]
            maps = affine_map(mean, std, want_mean, want_std, min_std)
            scale, shift = (channel_view(module, t.to(output.dtype), output) for t in maps)
            return torch.addcmul(shift, output, scale)

        return hook

    handles = [dense_layers[n].register_forward_hook(record(n)) for n in names]
    handles += [layers[n].register_forward_hook(correct(n)) for n in names]
    modes = [(m, m.training) for m in (pruned, dense)]
    try:
        pruned.eval(), dense.eval()
        for x, _ in batches:
            x = x.to(device)
            dense(x)
            pruned(x)
    finally:
        for h in handles:
            h.remove()
        for module, training in modes:
            module.train(training)
    scales = {}
    for name in names:
        layer = layers[name]
        scale, shift = affine_map(
            measured[name].mean,
            measured[name].std,
            dense_channel_values(layer, target[name].mean),
            dense_channel_values(layer, target[name].std),
            min_std,
        )
        layer.weight.mul_(scale.reshape(layer.weight.shape).to(layer.weight.dtype))
        layer.bias.mul_(scale.reshape(layer.bias.shape).to(layer.bias.dtype))
        layer.bias.add_(shift.reshape(layer.bias.shape).to(layer.bias.dtype))
        scales[name] = float(scale.mean())
    return scales


def affine_map(
    mean: torch.Tensor,
    std: torch.Tensor,
    want_mean: torch.Tensor,
    want_std: torch.Tensor,
    min_std: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale, shift`` taking (mean, std) to (want_mean, want_std)."""
    scale = torch.where(std > min_std, want_std / std.clamp_min(min_std), 1.0)
    return scale, want_mean - mean * scale
