"""The executors on their real engines, on this machine: a local Dask cluster of two worker
processes (bound to 127.0.0.1) and submitit's local executor, on a tiny grid of synthetic data."""

from __future__ import annotations

import importlib
import sys

import pandas as pd
import pytest
import torch
from reflow.baselines import METHODS

from reflow.execute import ExecEnv
from reflow.executors import get_executor
from reflow.executors.shards import merge_shards
from reflow.grid import Experiment, Grid
from reflow.results import KEY, ResultStore
from reflow.runner import run_experiments
from reflow.settings import Settings

pytest.importorskip("distributed")
pytest.importorskip("submitit")
pytestmark = pytest.mark.slow

FAST = Settings(calib_batches=1, calib_batch_size=16, probe_samples=50, eval_batch_size=500)
GRID = Grid(("resnet20",), ("synthetic",), ("mp", "random"), ("none", "reflow"), (0.5, 0.8))
PLUGIN = ("plugin_methods",)
# timings and provenance differ between runs; everything else must not
VOLATILE = {
    "finished_at",
    "worker",
    "cuda_visible_devices",
    "threads",
    "peak_mem_mb",
    "device",
    "select_mem_mb",
    "git_commit",
    "experiment",
}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The misbehaving test methods, registered for one test and removed after it."""
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("REFLOW_TEST_MARKER", str(marker))
    monkeypatch.setenv("PYTHONPATH", str(__import__("pathlib").Path(__file__).parent))
    sys.modules.pop("plugin_methods", None)
    importlib.import_module("plugin_methods")
    yield marker
    for name in ("test_fail", "test_crash"):
        METHODS.remove(name)
    sys.modules.pop("plugin_methods", None)


def _run(store, grid=GRID, executor="serial", plugins=(), **options) -> dict:
    experiment = Experiment("x", grid, (FAST,))
    chosen = get_executor(executor, {k: str(v) for k, v in options.items()})
    return run_experiments(
        [experiment], store, chosen, ExecEnv("cpu", None, False, plugins), progress=False
    )


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in frame.columns if c not in VOLATILE and not c.startswith("t_")]
    return frame[keep].sort_values(list(KEY)).reset_index(drop=True)


def test_dask_rows_match_serial_and_come_from_two_pinned_processes(tmp_path) -> None:
    serial, dask = ResultStore(tmp_path / "serial"), ResultStore(tmp_path / "dask")
    threads_before = torch.get_num_threads()
    assert _run(serial, threads=1)["ran"] == 8
    assert set(serial.read().threads) == {1}  # --threads reaches the serial process too
    assert torch.get_num_threads() == threads_before  # and is given back after the sweep
    counts = _run(dask, executor="dask", workers=2, threads=1, gpus="0,1")
    assert counts == {"done_before": 0, "duplicates": 0, "ran": 8, "errors": 0}
    frame = dask.read()
    assert frame.worker.nunique() == 2  # two worker processes did the work
    assert set(frame.cuda_visible_devices) == {"0", "1"}  # one pinned device each
    assert set(frame.threads) == {1}  # what --threads asked, not Dask's default
    pd.testing.assert_frame_equal(_comparable(frame), _comparable(serial.read()))
    probes = dask.read("probes").drop(columns=["run_id"])
    assert len(probes) == 8 * 19


def test_dask_threads_per_worker(tmp_path) -> None:
    grid = Grid(("resnet20",), ("synthetic",), ("mp",), ("none",), (0.5,))
    _run(ResultStore(tmp_path), grid, "dask", workers=1, threads=2)
    assert set(ResultStore(tmp_path).read().threads) == {2}


def test_dask_failures_become_rows_and_a_crash_runs_once(tmp_path, plugin) -> None:
    grid = Grid(
        ("resnet20",), ("synthetic",), ("mp", "test_fail", "test_crash"), ("none",), (0.5, 0.9)
    )
    store = ResultStore(tmp_path / "store")
    counts = _run(store, grid, "dask", PLUGIN, workers=2, threads=1)
    assert counts["ran"] == 6 and counts["errors"] == 2
    frame = store.read().set_index(["method", "sparsity"])
    assert "failing on purpose" in frame.loc[("test_fail", 0.9), "error"]
    assert "crash" in frame.loc[("test_crash", 0.9), "error"]
    assert (
        frame.loc[("mp", 0.9), "error"] is None and frame.loc[("test_crash", 0.5), "error"] is None
    )
    crashes = [
        line for line in plugin.read_text().splitlines() if line.startswith("test_crash 0.9")
    ]
    assert len(crashes) == 1  # allowed-failures 0: the crashing task was not rerun elsewhere
    # a rerun runs only the two errored rows, and never duplicates a key
    again = _run(store, grid, "dask", PLUGIN, workers=2, threads=1)
    assert again["done_before"] == 4 and again["ran"] == 2
    assert store.count() == 6 and not store.read()[list(KEY)].duplicated().any()


def test_dask_resumes_only_the_missing_tasks(tmp_path) -> None:
    store = ResultStore(tmp_path)
    partial = Grid(("resnet20",), ("synthetic",), ("mp",), ("none", "reflow"), (0.5, 0.8))
    _run(store, partial)
    counts = _run(store, executor="dask", workers=2, threads=1)
    assert counts["done_before"] == 4 and counts["ran"] == 4
    assert store.count() == 8 and not store.read()[list(KEY)].duplicated().any()


FAMILY = Grid(("resnet20",), ("synthetic",), ("chita_s", "chita_u"), ("none",), (0.5, 0.8))
SMALL_CHITA = {"num_grads": "8", "iterations": "3"}


@pytest.mark.parametrize("executor", ["dask", "submitit"])
def test_a_family_search_runs_once_on_a_distributed_executor(tmp_path, executor) -> None:
    settings = Settings(
        **{**vars(FAST), "options": {"chita_s": SMALL_CHITA, "chita_u": SMALL_CHITA}}
    )
    chosen = get_executor(
        executor,
        {"workers": "2", "threads": "1"}
        if executor == "dask"
        else {"folder": str(tmp_path / "jobs"), "cluster": "local", "poll_seconds": "0.5"},
    )
    store = ResultStore(tmp_path / "store")
    counts = run_experiments(
        [Experiment("x", FAMILY, (settings,))], store, chosen, ExecEnv("cpu"), progress=False
    )
    assert counts["ran"] == 4 and counts["errors"] == 0
    frame = store.read()
    assert (frame.info_selection_shared == 1).all()
    for _, pair in frame.groupby("sparsity"):
        assert pair.worker.nunique() == 1  # both members ran in the process that searched
        assert pair.t_collect.nunique() == 1  # one search, its measured time replayed


def test_submitit_local_shards_merge_and_skip(tmp_path) -> None:
    store = ResultStore(tmp_path / "store")
    folder = tmp_path / "store" / "submitit"
    counts = _run(
        store, executor="submitit", folder=folder, cluster="local", threads=1, poll_seconds=0.5
    )
    assert counts["ran"] == 8 and counts["errors"] == 0
    shards = sorted((folder / "shards").glob("*.json"))
    assert len(shards) == 4  # one per task: the rows sharing a selection
    assert merge_shards(store, folder / "shards") == (0, 8)  # all already in: deduplicated
    fresh = ResultStore(tmp_path / "elsewhere")
    assert merge_shards(fresh, folder / "shards") == (8, 0)  # `reflow merge` after the driver
    pd.testing.assert_frame_equal(_comparable(fresh.read()), _comparable(store.read()))
    # a rerun finds every row finished; with the rows removed it reuses the shards (no jobs)
    assert _run(store, executor="submitit", folder=folder, cluster="local")["ran"] == 0
    empty = ResultStore(tmp_path / "empty")
    counts = _run(empty, executor="submitit", folder=folder, cluster="debug")
    assert counts["ran"] == 8 and not (folder / "jobs" / "debug").exists()


def test_missing_engine_is_one_clear_line(monkeypatch) -> None:
    import importlib.util

    from reflow.errors import ReflowError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "distributed" else real(name, *a),
    )
    with pytest.raises(ReflowError, match=r'pip install -e "\.\[dask\]"'):
        get_executor("dask").check()
