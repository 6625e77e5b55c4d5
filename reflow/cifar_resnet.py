"""CIFAR ResNets (He et al. 2016, option-A shortcuts), state-dict compatible with the public
checkpoints of Idelbayev's pytorch_resnet_cifar10 (``conv1``, ``bn1``, ``layerN.M.*``, ``linear``).

The normalisation layer is a choice, as torchvision's ``norm_layer``: BatchNorm (the default) or
LayerNorm over channels and positions (``GroupNorm(1, C)``, no running statistics), with the
module names kept (``bn1``, ``layerN.M.bn1/bn2``) so checkpoints map one to one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Blocks per stage for each depth (depth = 6n + 2).
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels; it has no parameters."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


NormLayer = Callable[[int], nn.Module]


def layer_norm(channels: int) -> nn.GroupNorm:
    """LayerNorm for images: each sample normalised over channels and positions, per-channel
    affine; it keeps no running statistics."""
    return nn.GroupNorm(1, channels)


NORMS: dict[str, NormLayer] = {"batch": nn.BatchNorm2d, "layer": layer_norm}


class BasicBlock(nn.Module):
    def __init__(
        self, in_planes: int, planes: int, stride: int, norm: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        needs_shortcut = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(planes) if needs_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        norm: NormLayer = nn.BatchNorm2d,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm(width)
        planes = width
        stages = []
        for stage_width, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(planes, stage_width, stride if i == 0 else 1, norm))
                planes = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(
    depth: int, num_classes: int = 10, norm: str = "batch", width: int = 16
) -> CifarResNet:
    """A CIFAR ResNet of the given depth (20, 32, 44, 56 or 110); ``norm`` is batch or layer;
    ``width`` is the first stage's (16 in the paper; narrower copies keep tests fast)."""
    return CifarResNet(DEPTHS[depth], num_classes, NORMS[norm], width)
