"""Distilled calibration (ZeroQ): the BatchNorm-statistics loss falls, images are deterministic
per seed, a second request reads the cache, and a row records the distillation's facts."""

from __future__ import annotations

import pytest
import torch

from reflow import distill
from reflow.cli import main
from reflow.distill import distill_batch, distilled_batches
from reflow.results import ResultStore
from reflow.zoo import get_model


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    try:
        return get_model("resnet20", "cifar10-jpeg", "cifar10-jpeg").model.eval()
    except Exception as exc:  # no shared checkpoints on this machine
        pytest.skip(f"needs the shared resnet20 checkpoint: {exc}")


def test_the_bn_statistics_loss_falls_tenfold_on_resnet20(resnet20) -> None:
    """8 images, 60 iterations (the issue's bar is a 10x fall; 100 iterations on 32 images fell
    71x here)."""
    images, losses = distill_batch(resnet20, (3, 32, 32), 8, seed=0, iterations=60)
    assert losses[-1] * 10 <= losses[0], f"fell only {losses[0] / losses[-1]:.1f}x"
    again, _ = distill_batch(resnet20, (3, 32, 32), 8, seed=0, iterations=60)
    assert torch.equal(images, again)
    other, _ = distill_batch(resnet20, (3, 32, 32), 8, seed=1, iterations=2)
    assert not torch.equal(images, other)


def test_distillation_is_cached(resnet20, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REFLOW_CACHE", str(tmp_path))
    calls = []
    real = distill.distill_batch
    monkeypatch.setattr(distill, "distill_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = distilled_batches(resnet20, "resnet20", (3, 32, 32), 2, 4, seed=3, iterations=3)
    second = distilled_batches(resnet20, "resnet20", (3, 32, 32), 2, 4, seed=3, iterations=3)
    assert len(calls) == 2 and not first.cached and second.cached  # 2 batches, built once
    assert all(
        torch.equal(a, b) for (a, _), (b, _) in zip(first.batches, second.batches, strict=True)
    )
    assert second.seconds == first.seconds > 0 and first.loss_last < first.loss_first


def test_a_distilled_row_records_its_facts(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REFLOW_CACHE", str(tmp_path / "cache"))
    argv = ["run", "--model", "resnet20", "--dataset", "synthetic", "--checkpoint", "none"]
    argv += ["--method", "mp", "--repair", "reflow", "--sparsity", "0.5"]
    argv += ["--calib-source", "distilled:3", "--calib-batches", "2", "--calib-batch-size", "4"]
    argv += ["--eval-samples", "50", "--probe-samples", "0", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    (row,) = ResultStore(tmp_path / "o", readonly=True).read().to_dict("records")
    assert row["calib_samples"] == 8 and row["calib_distil_seconds"] > 0
    assert row["calib_distil_cached"] == 0
    assert "distillation" in row["seed_controls"]
