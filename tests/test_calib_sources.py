"""Calibration sources: CIFAR-10-C corruptions with the dataset's constants (closed forms where
they have one), deterministic per seed, severity 0 the identity, the test split never touched;
noise images; the test split refused as a source."""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
import pytest
import torch

from reflow.calib_sources import SEVERITIES, check_source, corrupt
from reflow.data import DATASETS, ImageData, TensorSplit
from reflow.errors import ReflowError
from reflow.harness import Setup, calibration_batches
from reflow.repairs import get_repair
from reflow.seeds import repair_seed_controls
from reflow.settings import Settings


def _pixels(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(40, 216, (n, 3, 32, 32), generator=g).float() / 255).contiguous()


@pytest.mark.parametrize("name", list(SEVERITIES))
def test_severity_zero_is_the_identity_and_every_draw_is_seeded(name: str) -> None:
    x = _pixels()
    assert torch.equal(corrupt(x, name, 0, seed=1), x)
    a, b = corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(a, a.mul(255).round().div(255))  # uint8 levels, as CIFAR-10-C stores


def test_gaussian_noise_has_the_cifar10c_scale() -> None:
    x = torch.full((64, 3, 32, 32), 0.5)
    for severity, c in enumerate(SEVERITIES["gaussian_noise"], start=1):
        shift = corrupt(x, "gaussian_noise", severity, seed=severity) - x
        assert float(shift.std()) == pytest.approx(c, rel=0.03)
    assert not torch.equal(corrupt(x, "gaussian_noise", 2, 1), corrupt(x, "gaussian_noise", 2, 2))


def test_contrast_scales_deviations_around_each_channels_mean() -> None:
    x = _pixels()
    c = SEVERITIES["contrast"][4]
    out = corrupt(x, "contrast", 5, seed=0)
    means = x.mean(dim=(2, 3), keepdim=True)
    expected = ((x - means) * c + means).mul(255).floor().div(255)
    assert torch.equal(out, expected)


def test_brightness_raises_hsv_value_as_skimage_does() -> None:
    """Per pixel: HSV value + c (clipped at 1), hue and saturation unchanged (colorsys as the
    closed-form HSV reference)."""
    x = _pixels(n=1)
    c = SEVERITIES["brightness"][2]
    out = corrupt(x, "brightness", 3, seed=0)[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    for rgb, got in zip(x[0].permute(1, 2, 0).reshape(-1, 3).numpy()[:200], out[:200], strict=True):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        want = np.floor(np.array(colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))) * 255) / 255
        assert np.allclose(got, want, atol=1.01 / 255)


def test_gaussian_blur_is_scipys_nearest_mode_filter() -> None:
    from scipy.ndimage import gaussian_filter

    x = _pixels(n=2)
    sigma = SEVERITIES["gaussian_blur"][4]
    want = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
    want = torch.from_numpy(want).clamp(0, 1).mul(255).floor().div(255)
    assert torch.equal(corrupt(x, "gaussian_blur", 5, seed=0), want)


def test_jpeg_quality_falls_with_severity() -> None:
    x = _pixels(n=2)
    errors = [float((corrupt(x, "jpeg", s, 0) - x).abs().mean()) for s in (1, 5)]
    assert 0 < errors[0] < errors[1]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("test", "leaks the evaluation set"),
        ("shifted:fog:3", "unknown corruption 'fog'"),
        ("shifted:contrast:6", "must be 0-5"),
        ("imagenet", "calib_source must be"),
    ],
)
def test_bad_sources_are_one_line(source: str, match: str) -> None:
    with pytest.raises(ReflowError, match=match):
        check_source(source)
    with pytest.raises(ReflowError, match=match):
        Settings(calib_source=source)


def _setup() -> Setup:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,), generator=g)
    entry = DATASETS.get("cifar10-jpeg")
    split = TensorSplit(images, labels, entry.mean, entry.std)
    test = TensorSplit(images.clone(), labels.clone(), entry.mean, entry.std)
    data = ImageData("cifar10-jpeg", split, test, 10, None)
    return Setup(None, data, torch.device("cpu"), shape=(3, 32, 32))  # type: ignore[arg-type]


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()


def test_shifted_calibration_corrupts_the_draw_and_never_the_test_split() -> None:
    setup = _setup()
    before = _digest(setup.data.test.images)
    clean = Settings(calib_batches=2, calib_batch_size=8)
    shifted = Settings(calib_batches=2, calib_batch_size=8, calib_source="shifted:contrast:5")
    a = calibration_batches(setup, 3, shifted)
    b = calibration_batches(setup, 3, shifted)
    plain = calibration_batches(setup, 3, clean)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], plain[0][0])
    assert a[0][0].std() < plain[0][0].std()  # contrast 0.15 shrinks the spread
    evaluated = torch.cat([x for x, _ in setup.data.test_batches(16)])
    assert _digest(setup.data.test.images) == before
    assert evaluated.std() > 0.5  # clean, normalised test images
    noise = calibration_batches(
        setup, 3, Settings(calib_batches=2, calib_batch_size=8, calib_source="noise")
    )
    assert noise[0][0].shape == (8, 3, 32, 32) and abs(float(noise[0][0].std()) - 1) < 0.05


def test_the_seed_controls_the_corruption_too() -> None:
    reflow = get_repair("reflow")
    assert repair_seed_controls(reflow, source="shifted:jpeg:3") == [
        "calibration draw and its corruption"
    ]
    assert repair_seed_controls(reflow, source="noise") == ["calibration draw (noise images)"]
    assert repair_seed_controls(get_repair("none"), source="noise") == []
