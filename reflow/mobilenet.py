"""MobileNetV1 for CIFAR (Howard et al. 2017, the common 32×32 variant): depthwise-separable
blocks, the network of the paper's MobileNet rows. State-dict compatible with
``mobilenetv1_cifar10jpeg.pt`` (``conv1``, ``bn1``, ``layers.N.conv1/bn1/conv2/bn2``, ``linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reflow.model_registry import ModelEntry, register_model, shared_checkpoint

#: (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3×3 (one filter per channel), BN, ReLU; pointwise 1×1, BN, ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, in_planes, 3, stride=stride, padding=1, groups=in_planes, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)))


class MobileNetV1Cifar(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, planes = [], 32
        for width, stride in BLOCKS:
            blocks.append(DepthwiseSeparable(planes, width, stride))
            planes = width
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


register_model(
    ModelEntry(
        "mobilenet_v1",
        "cifar",
        MobileNetV1Cifar,
        10,
        (
            shared_checkpoint(
                "mobilenetv1_cifar10jpeg.pt",
                "0b258aaa2fecbee8e7810ad0f7058ea73621dd6362b12290b6e6b7621a6e06bb",
                86.45,
                "trained from scratch on cifar10-jpeg train: 20 epochs, one-cycle SGD "
                "nesterov, max lr 0.1, wd 5e-4, batch 128, random crop + flip",
            ),
        ),
        summary="MobileNetV1 for 32x32 images (depthwise-separable, BatchNorm)",
    )
)
