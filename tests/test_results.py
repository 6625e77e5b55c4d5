import pandas as pd
import pytest

from reflow.errors import ReflowError
from reflow.results import ResultStore, row_key


def _row(repair: str = "none", sparsity: float = 0.5, error: str | None = None) -> dict:
    key = {
        "model": "m",
        "checkpoint": "c",
        "dataset": "d",
        "method": "mp",
        "repair": repair,
        "sparsity": sparsity,
        "seed": 0,
        "config_hash": "h",
    }
    return {**key, "run_id": f"{repair}-{sparsity}", "top1": 50.0, "error": error}


def test_add_and_resume_keys(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row("none"), probes=[{"layer": "bn1", "ratio": 0.5}])
    store.add(_row("reflow"))
    assert store.finished() == {row_key(_row("none")), row_key(_row("reflow"))}
    assert len(store.read()) == 2
    assert len(store.read("probes")) == 1


def test_sparsity_round_trips_through_csv(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row(sparsity=0.7))
    assert row_key(_row(sparsity=0.7)) in ResultStore(tmp_path).finished()


def test_errored_rows_are_rerun_and_replaced(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row(error="RuntimeError: out of memory"))
    assert store.finished() == set()
    store.add(_row())
    frame = store.read()
    assert len(frame) == 1 and frame["error"].isna().all()


def test_orphan_probe_rows_are_ignored(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row("none"), probes=[{"layer": "bn1", "ratio": 0.5}])
    # A crash between writing probes and the result row leaves probes without a result.
    orphan = pd.concat(
        [
            pd.read_csv(store.path("probes")),
            pd.DataFrame([{"run_id": "lost", "layer": "bn1", "ratio": 9.0}]),
        ]
    )
    orphan.to_csv(store.path("probes"), index=False)
    assert store.read("probes")["run_id"].tolist() == ["none-0.5"]


def test_no_temporary_files_left(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "results.csv"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_missing_and_unreadable_folders_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ReflowError, match="no results in"):
        ResultStore(tmp_path / "nothing", create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReflowError, match="is a file"):
        ResultStore(tmp_path / "file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.csv").write_bytes(b'a,b\n"unterminated\n')
    with pytest.raises(ReflowError, match="cannot read"):
        ResultStore(bad, create=False).read()
