"""Fixtures for the accuracy gates: real data and checkpoints from REFLOW_HOME (../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reflow.harness import Grid, Settings, run_grid
from reflow.results import ResultStore

SHARED = Path(os.environ.get("REFLOW_HOME", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def shared_home() -> Path:
    """The shared folder; in CI its absence fails the gates instead of skipping them."""
    if not (SHARED / "models").is_dir() or not (SHARED / "data" / "cifar10-jpeg").is_dir():
        message = f"REFLOW_HOME not usable: no models/ or data/cifar10-jpeg/ in {SHARED}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ["REFLOW_HOME"] = str(SHARED)
    return SHARED


@pytest.fixture(scope="session")
def run_rows(shared_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run a grid once per session on resnet20 + cifar10-jpeg and return the stored tables."""
    folder = tmp_path_factory.mktemp("gates")

    def run(grid: Grid, settings: Settings | None = None) -> ResultStore:
        store = ResultStore(folder)
        counts = run_grid(grid, store, settings or Settings(), progress=False)
        assert counts["errors"] == 0, store.read()["error"].dropna().tolist()
        return store

    return run
