"""Where a repair's calibration images come from (the ``calib_source`` setting), so the benchmark
can measure a repair fed with scarce, shifted or no real data.

- ``train`` (default): the seeded draw from the train split (augmented with ``calib_augment``).
- ``shifted:NAME:SEVERITY``: that draw passed through a CIFAR-10-C corruption (Hendrycks &
  Dietterich 2019) with the constants of its ``make_cifar_c.py``, severity 1–5 (0: none); the
  test split stays clean. The five here are written in torch/scipy/PIL rather than taken from
  the ``imagecorruptions`` package, whose constants are ImageNet-C's (for 224-pixel images), not
  CIFAR-10-C's. Each is deterministic per seed, and stored as uint8 as CIFAR-10-C stores them.
- ``noise``: standard-normal images in the normalised space (pixels drawn with the dataset's
  mean and std): the trivial data-free baseline.
- ``distilled`` (or ``distilled:ITERATIONS``, default 500): images synthesised from the dense
  model's BatchNorm statistics as ZeroQ does (`reflow.distill`), cached per model and seed.

``test`` is refused: calibrating on the evaluation split would leak it.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from reflow.errors import ReflowError

#: CIFAR-10-C's constant per severity 1–5 (make_cifar_c.py).
SEVERITIES = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg": (80, 65, 58, 50, 40),
}
SOURCES = {
    "train": "the seeded draw from the train split (the default; --calib-augment augments it)",
    "shifted:NAME:SEVERITY": "the train draw through a CIFAR-10-C corruption, NAME one of "
    + ", ".join(SEVERITIES)
    + ", severity 1-5 (0: none), deterministic per seed; the test split stays clean",
    "noise": "standard-normal images in the normalised space (no real data at all)",
    "distilled[:ITERATIONS]": "images distilled from the dense model's BatchNorm statistics "
    "(ZeroQ: Adam lr 0.5, 500 iterations by default), cached per model weights and seed; the "
    "distillation's seconds and losses are recorded in the row",
}


def check_source(source: str) -> None:
    """One line for a source that is not one of `SOURCES`."""
    parts = source.split(":")
    if source in ("train", "noise", "distilled"):
        return
    if parts[0] == "distilled" and len(parts) == 2:
        if not parts[1].isdigit() or int(parts[1]) < 1:
            raise ReflowError(f"iterations in calib_source {source!r} must be a positive integer")
        return
    if source == "test":
        raise ReflowError(
            "calib_source test is refused: calibrating on the test split leaks the evaluation "
            "set into the repair; use train, shifted:NAME:SEVERITY or noise"
        )
    if parts[0] == "shifted" and len(parts) == 3:
        if parts[1] not in SEVERITIES:
            raise ReflowError(
                f"unknown corruption {parts[1]!r} in calib_source {source!r}; corruptions: "
                + ", ".join(SEVERITIES)
            )
        if parts[2] not in {"0", "1", "2", "3", "4", "5"}:
            raise ReflowError(f"severity in calib_source {source!r} must be 0-5")
        return
    raise ReflowError(
        f"calib_source must be train, noise, distilled[:ITERATIONS] or shifted:NAME:SEVERITY "
        f"(e.g. shifted:gaussian_noise:3), got {source!r}"
    )


def seed_effect(source: str) -> str:
    """What the seed adds to a repair's calibration draw under ``source``."""
    if source.startswith("shifted:"):
        return " and its corruption"
    if source.startswith("distilled"):
        return " (distillation's starting noise)"
    return " (noise images)" if source == "noise" else ""


def corrupt(pixels: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """CIFAR-10-C corruption ``name`` at ``severity`` of images in [0, 1] (N, C, H, W), seeded,
    quantised to uint8 levels as the dataset stores them."""
    if severity == 0:
        return pixels
    c = SEVERITIES[name][severity - 1]
    generator = torch.Generator().manual_seed(seed)
    out = CORRUPTIONS[name](pixels.float(), c, generator)
    return out.clamp(0, 1).mul(255).floor().div(255)  # np.uint8 truncates


def _gaussian_noise(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    return x + c * torch.randn(x.shape, generator=g)


def _gaussian_blur(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    # skimage.filters.gaussian(multichannel=True): scipy's filter, mode nearest, truncate 4
    blurred = gaussian_filter(x.numpy(), sigma=(0, 0, c, c), mode="nearest", truncate=4.0)
    return torch.from_numpy(blurred)


def _contrast(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def _brightness(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    # HSV value + c with hue and saturation kept: RGB scales with V (black pixels turn grey)
    value = x.amax(dim=1, keepdim=True)
    raised = (value + c).clamp(max=1.0)
    scaled = x * raised / value.clamp(min=1e-12)
    return torch.where(value > 0, scaled, raised.expand_as(x))


def _jpeg(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    out = []
    for image in (x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=int(c))
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


CORRUPTIONS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
}


def shifted(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    source: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised batches corrupted in pixel space and normalised again."""
    _, name, level = source.split(":")
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return [
        ((corrupt(x * s + m, name, int(level), (seed + i) % (1 << 63)) - m) / s, y)
        for i, (x, y) in enumerate(batches)
    ]


def noise(
    n_batches: int, batch_size: int, shape: tuple[int, ...], seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Standard-normal images (normalised space), labels 0 (repairs read no label)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn((batch_size, *shape), generator=generator), torch.zeros(batch_size).long())
        for _ in range(n_batches)
    ]
