"""Helpers shared by test modules (a plain module: two conftest.py files cannot both be imported
by name when tests/ and benchmarks/ run together)."""

from __future__ import annotations

import torch
from torch import nn

from reflow.data import ImageData, TensorSplit


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


def tiny_data(n_train: int = 256, n_test: int = 64, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    split = lambda n: TensorSplit(  # noqa: E731
        torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randint(10, (n,), generator=g),
    )
    return ImageData("tiny", split(n_train), split(n_test), 10, None)


def run_grid(grid, store, settings=None, device="cpu", progress=False, **_: object) -> dict:
    """Run one grid in this process through the one pipeline (`reflow.runner`)."""
    from reflow.execute import ExecEnv
    from reflow.grid import Experiment
    from reflow.runner import run_experiments
    from reflow.settings import Settings

    experiment = Experiment("run", grid, (settings or Settings(),))
    env = ExecEnv(str(device), None, progress)
    return run_experiments([experiment], store, env=env, progress=progress)


def run_sweep(experiments, store, progress=False) -> dict:
    """Run a sweep file's experiments in this process (what `reflow sweep` does after parsing)."""
    from reflow.execute import ExecEnv
    from reflow.runner import run_experiments

    return run_experiments(experiments, store, env=ExecEnv(progress=progress), progress=progress)
