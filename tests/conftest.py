"""Shared fixtures: a tiny BN network, tiny synthetic data, and the shared folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from reflow.cifar_resnet import cifar_resnet
from reflow.data import ImageData, TensorSplit

SHARED = Path(os.environ.get("REFLOW_HOME", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep tests from writing into the user's cache, but share decoded data across tests."""
    monkeypatch.setenv("REFLOW_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def shared_home(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not (SHARED / "models").is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    monkeypatch.setenv("REFLOW_HOME", str(SHARED))
    return SHARED


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN layers non-trivial statistics and affine parameters, as a trained net has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(cifar_resnet(20))


def tiny_data(n_train: int = 256, n_test: int = 64, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    split = lambda n: TensorSplit(  # noqa: E731
        torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randint(10, (n,), generator=g),
    )
    return ImageData("tiny", split(n_train), split(n_test), 10, None)


@pytest.fixture
def data() -> ImageData:
    return tiny_data()
