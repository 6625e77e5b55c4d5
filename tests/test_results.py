"""The SQLite result store: typed keys, one transaction per row, no duplicates, CSV import and
export."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from reflow.errors import ReflowError
from reflow.identity import run_id
from reflow.results import ResultStore, row_key


def _row(
    repair: str = "none",
    sparsity: float = 0.5,
    error: str | None = None,
    config_hash: str = "h",
    top1: float = 50.0,
) -> dict:
    key = {
        "model": "m",
        "checkpoint": "c",
        "dataset": "d",
        "method": "mp",
        "repair": repair,
        "sparsity": sparsity,
        "seed": 0,
        "config_hash": config_hash,
    }
    return {**key, "run_id": run_id(row_key(key)), "top1": top1, "error": error}


def test_add_and_resume_keys(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row("none"), probes=[{"layer": "bn1", "ratio": 0.5}])
    store.add(_row("reflow"))
    assert store.finished() == {row_key(_row("none")), row_key(_row("reflow"))}
    assert len(store.read()) == 2
    probes = store.read("probes")
    assert len(probes) == 1 and probes.loc[0, "repair"] == "none"  # joined with its key


@pytest.mark.parametrize("digest", ["1234567890", "12e4567000", "0000012345", "inf", "nan"])
def test_number_like_hashes_stay_text(tmp_path, digest: str) -> None:
    """A config hash made of digits (1 in 100) or shaped like a float must round-trip as text:
    read back as a number, a finished row would not be recognised and would be run again."""
    ResultStore(tmp_path).add(_row(config_hash=digest))
    store = ResultStore(tmp_path)
    assert store.finished() == {row_key(_row(config_hash=digest))}
    assert store.read()["config_hash"].tolist() == [digest]
    store.add(_row(config_hash=digest, top1=60.0))  # the same key replaces, never duplicates
    assert store.read()["top1"].tolist() == [60.0]


def test_sparsity_round_trips(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row(sparsity=0.7))
    assert row_key(_row(sparsity=0.1 + 0.6)) in ResultStore(tmp_path).finished()


def test_errored_rows_are_rerun_and_replaced_with_their_aux_rows(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row(error="RuntimeError: out of memory"), probes=[{"layer": "x", "ratio": 1.0}])
    assert store.finished() == set()
    store.add(_row(), probes=[{"layer": "bn1", "ratio": 0.5}])
    frame = store.read()
    assert len(frame) == 1 and frame["error"].isna().all()
    assert store.read("probes")["layer"].tolist() == ["bn1"]


def test_unique_key_is_enforced_by_the_database(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(_row())
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute(
            "INSERT INTO results (run_id, model, checkpoint, dataset, method, repair, sparsity, "
            "seed, config_hash) VALUES ('other', 'm', 'c', 'd', 'mp', 'none', 0.5, 0, 'h')"
        )


def test_a_failed_commit_leaves_nothing(tmp_path, monkeypatch) -> None:
    store = ResultStore(tmp_path)
    original = store._insert

    def fail_on_layers(table, rows):
        if table == "layers":
            raise OSError("disk full (simulated)")
        original(table, rows)

    monkeypatch.setattr(store, "_insert", fail_on_layers)
    with pytest.raises(OSError):
        store.add(_row(), probes=[{"layer": "bn1", "ratio": 0.5}], layers=[{"layer": "c"}])
    monkeypatch.undo()
    assert store.count() == 0
    assert (
        store.read("probes").empty
        and not store.db.execute("SELECT COUNT(*) FROM probes").fetchone()[0]
    )


def test_columns_are_added_as_rows_bring_them(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add({**_row("none"), "info_blocks": None})
    store.add({**_row("reflow"), "info_blocks": 12, "t_update": 0.5})
    frame = store.read().set_index("repair")
    assert frame.loc["reflow", "info_blocks"] == 12 and pd.isna(frame.loc["none", "t_update"])


def test_export_writes_tidy_csvs(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.add(
        _row(), probes=[{"layer": "bn1", "ratio": 0.5}], layers=[{"layer": "c", "density": 1}]
    )
    written = store.export("csv")
    assert {p.name for p in written} == {"results.csv", "probes.csv", "layers.csv"}
    exported = pd.read_csv(tmp_path / "probes.csv")
    assert exported.loc[0, "method"] == "mp" and exported.loc[0, "ratio"] == 0.5
    assert not list(tmp_path.glob(".*.tmp"))


def test_parquet_export_says_what_to_install(tmp_path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ReflowError, match="pip install pyarrow"):
        ResultStore(tmp_path).export("parquet")


def test_csv_folder_of_the_earlier_store_is_imported(tmp_path) -> None:
    """Rows of the CSV store keep their meaning: the hash is recomputed from the stored config
    under the non-default rule, orphan probe rows are dropped, bn_index becomes norm_index."""
    from reflow import baselines
    from reflow.identity import full_config, identity_hash_of_stored_config
    from reflow.repairs import get_repair
    from reflow.settings import Settings

    config = full_config(baselines.get_method("mp").config, get_repair("none").config, Settings())
    legacy = {**_row(config_hash="oldhash"), "config": json.dumps(config), "run_id": "r1"}
    pd.DataFrame([legacy]).to_csv(tmp_path / "results.csv", index=False)
    pd.DataFrame(
        [
            {
                **{k: legacy[k] for k in ("model", "method")},
                "run_id": "r1",
                "layer": "bn1",
                "bn_index": 0,
                "ratio": 0.5,
            },
            {"run_id": "lost", "layer": "bn1", "bn_index": 0, "ratio": 9.0},
        ]
    ).to_csv(tmp_path / "probes.csv", index=False)
    store = ResultStore(tmp_path, create=False)
    frame = store.read()
    assert frame["config_hash"].tolist() == [identity_hash_of_stored_config("mp", "none", config)]
    probes = store.read("probes")
    assert probes["ratio"].tolist() == [0.5] and probes["norm_index"].tolist() == [0]


def test_missing_and_unreadable_folders_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ReflowError, match="no results in"):
        ResultStore(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReflowError, match="is a file"):
        ResultStore(tmp_path / "file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.csv").write_bytes(b'a,b\n"unterminated\n')
    with pytest.raises(ReflowError, match="cannot import"):
        ResultStore(bad, create=False)
    (bad / "results.csv").unlink()
    (bad / "results.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ReflowError, match="cannot open"):
        ResultStore(bad)


def test_parquet_export_when_the_engine_is_installed(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    store = ResultStore(tmp_path)
    store.add(_row(), probes=[{"layer": "bn1", "ratio": 0.5}])
    written = store.export("parquet", tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert len(written) == 3 and frame["config_hash"].tolist() == ["h"]
