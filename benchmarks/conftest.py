"""Fixtures for the accuracy gates: real data and checkpoints from REFLOW_HOME (../shared)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from reflow.execute import ExecEnv
from reflow.grid import Experiment, Grid
from reflow.plan import planned_rows
from reflow.results import ResultStore
from reflow.runner import run_experiments
from reflow.settings import Settings

SHARED = Path(os.environ.get("REFLOW_HOME", Path(__file__).resolve().parents[2] / "shared"))


@dataclass(frozen=True)
class GateRows:
    """One gate's rows of the session store, which every gate shares: reading the whole store
    would also return rows another gate ran (another model, the same method and sparsity)."""

    store: ResultStore
    experiments: list[Experiment]

    def read(self, table: str = "results") -> pd.DataFrame:
        return planned_rows(self.store.read(table), self.experiments)


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
    """Run a grid (or experiments) into one session store, shared by every gate, and return it:
    rows that several gates need run once. REFLOW_GATE_STORE=DIR keeps that store between
    sessions (an interrupted gate run resumes; a rerun after a test-only change costs nothing)."""
    kept = os.environ.get("REFLOW_GATE_STORE")
    folder = Path(kept) if kept else tmp_path_factory.mktemp("gates")

    def run(what: Grid | list[Experiment], settings: Settings | None = None) -> GateRows:
        store = ResultStore(folder)
        if isinstance(what, Grid):
            what = [Experiment("gate", what, (settings or Settings(),))]
        counts = run_experiments(what, store, env=ExecEnv(progress=False), progress=False)
        rows = GateRows(store, what)
        assert counts["errors"] == 0, rows.read()["error"].dropna().tolist()
        return rows

    return run
