"""CIFAR ResNets (He et al. 2016, option-A shortcuts), state-dict compatible with the public
checkpoints of Idelbayev's pytorch_resnet_cifar10 (``conv1``, ``bn1``, ``layerN.M.*``, ``linear``).

The normalisation layer is a choice, as torchvision's ``norm_layer``: BatchNorm (the default) or
LayerNorm over channels and positions (``GroupNorm(1, C)``, no running statistics), with the
module names kept (``bn1``, ``layerN.M.bn1/bn2``) so checkpoints map one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from reflow.model_registry import (
    Checkpoint,
    ModelEntry,
    akamaster_checkpoints,
    register_model,
    shared_checkpoint,
)

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


def _resnet20_checkpoints() -> tuple[Checkpoint, ...]:
    (original,) = akamaster_checkpoints(
        20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.78
    )
    original = replace(original, dense_top1={"cifar10": 91.78, "cifar10-jpeg": 81.03})
    finetuned = Checkpoint(
        name="cifar10-jpeg",
        file="resnet20_cifar10jpeg.pt",
        sha256="9b4e9a0202765d26c64c775417879c5fad45fdfe343a52d3bd9e4f9e942121ef",
        url=None,
        dense_top1={"cifar10-jpeg": 88.44},
        accuracy_source="shared/README.md (eval: ToTensor + Normalize, full test split)",
        recipe=(
            "fine-tuned from resnet20-12fca82f.th on cifar10-jpeg train: 12 epochs, one-cycle "
            "SGD, lr 0.02, batch 128, random crop + flip"
        ),
    )
    return (finetuned, original)


def _resnet32_checkpoints() -> tuple[Checkpoint, ...]:
    (original,) = akamaster_checkpoints(
        32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.78
    )
    return (replace(original, dense_top1={"cifar10": 92.78, "cifar10-jpeg": 82.56}),)


for _depth, _checkpoints in (
    (20, _resnet20_checkpoints()),
    (32, _resnet32_checkpoints()),
    (44, akamaster_checkpoints(44, "014dd654", 93.10)),
    (56, akamaster_checkpoints(56, "4bfd9763", 93.39)),
    (110, akamaster_checkpoints(110, "1d1ed7c2", 93.68)),
):
    register_model(
        ModelEntry(
            f"resnet{_depth}",
            "cifar",
            lambda n, depth=_depth: cifar_resnet(depth, n),
            10,
            _checkpoints,
            summary=f"CIFAR ResNet-{_depth} (He et al. 2016, option A shortcuts), BatchNorm",
        )
    )
register_model(
    ModelEntry(
        "resnet20_ln",
        "cifar",
        lambda n: cifar_resnet(20, n, norm="layer"),
        10,
        (
            shared_checkpoint(
                "resnet20_ln_cifar10jpeg.pt",
                "c27e5571a50cead146cc118493c1cbcbf93ddde2cfb337fc962f7c970e92c3c2",
                83.99,
                "every BatchNorm2d of resnet20_cifar10jpeg.pt replaced by GroupNorm(1, C) (BN "
                "affine copied in), fine-tuned 32 epochs on cifar10-jpeg train: one-cycle SGD "
                "nesterov, max lr 0.1, wd 5e-4, batch 128, random crop + flip",
            ),
        ),
        summary="CIFAR ResNet-20 with GroupNorm(1, C) (LayerNorm) for BatchNorm: no running "
        "statistics, so REFLOW has nothing to re-estimate",
    )
)
