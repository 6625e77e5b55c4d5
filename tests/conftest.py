"""Shared fixtures: a tiny BN network, tiny synthetic data, and the shared folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import tiny_data, trained_like
from torch import nn

from reflow.cifar_resnet import cifar_resnet
from reflow.data import ImageData

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


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(cifar_resnet(20))


@pytest.fixture
def data() -> ImageData:
    return tiny_data()
