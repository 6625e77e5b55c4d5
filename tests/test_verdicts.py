"""Per-example outcomes in the store and the verdicts built on them: tables with intervals and
tie-aware best marks, `reflow compare`, shards that carry outcomes, old stores without them."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from reflow.cli import main
from reflow.execute import RowResult
from reflow.executors.shards import read_shard, write_shard
from reflow.outcomes import Outcomes, pack, unpack
from reflow.results import ResultStore
from reflow.tables import render, seed_statistics
from reflow.uncertainty import table_uncertainty

RUN = ["run", "--model", "resnet20", "--dataset", "synthetic", "--checkpoint", "none"]
RUN += ["--method", "mp,random", "--repair", "none,reflow", "--sparsity", "0.5", "--seed", "0,1"]
RUN += ["--eval-samples", "300", "--probe-samples", "0", "--calib-batches", "2"]
RUN += ["--calib-batch-size", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ResultStore:
    folder = tmp_path_factory.mktemp("verdicts")
    assert main([*RUN, "--out", str(folder)]) == 0
    return ResultStore(folder, readonly=True)


def test_stored_predictions_reproduce_every_rows_top1(store) -> None:
    frame = store.read()
    outcomes = store.outcomes()
    assert len(frame) == 8 and set(outcomes) == set(frame["run_id"])
    for row in frame.itertuples():
        correct = outcomes[row.run_id].correct()
        assert len(correct) == 300
        assert 100.0 * correct.sum() / len(correct) == row.top1
    assert len({o.eval_order for o in outcomes.values()}) == 1


def test_ten_thousand_predictions_cost_under_20_kb() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 10_000)
    predicted = np.where(rng.random(10_000) < 0.8, labels, rng.integers(0, 10, 10_000))
    blob = pack(predicted)
    assert len(blob) <= 20_000
    assert np.array_equal(unpack(blob), predicted)
    many = rng.integers(0, 1000, 10_000)  # ImageNet's classes need uint16
    assert np.array_equal(unpack(pack(many)), many) and pack(many)[0] == 2


def test_shards_carry_outcomes(tmp_path) -> None:
    outcomes = Outcomes("abc", pack(np.arange(5) % 3), pack(np.arange(5) % 2))
    write_shard(tmp_path / "s.json", [RowResult({"x": 1}, outcomes=outcomes), RowResult({})])
    with pytest.raises(Exception, match="without"):  # rows without their key are refused
        read_shard(tmp_path / "s.json")
    row = {k: 1 for k in ("model", "checkpoint", "dataset", "method", "repair", "run_id")}
    row |= {"sparsity": 0.5, "seed": 0, "config_hash": "h"}
    write_shard(tmp_path / "t.json", [RowResult(row, outcomes=outcomes)])
    (back,) = read_shard(tmp_path / "t.json")
    assert back.outcomes == outcomes


def test_a_store_without_outcomes_still_tabulates(store, tmp_path, capsys) -> None:
    old = tmp_path / "old"
    old.mkdir()
    source = sqlite3.connect(store.folder / "results.sqlite")
    target = sqlite3.connect(old / "results.sqlite")
    source.backup(target)
    target.execute("DROP TABLE outcomes")
    target.execute("DROP TABLE eval_orders")
    target.commit()
    target.close()
    assert ResultStore(old, readonly=True).outcomes() == {}
    assert main(["table", str(old), "--stat", "ci"]) == 0
    out = capsys.readouterr().out
    assert "[n/a]" in out and "ties not tested" in out
    assert main(["compare", str(old), "mp+reflow", "mp"]) == 0
    assert "n/a (no comparable" in capsys.readouterr().out


def test_table_prints_mean_std_n_and_intervals(store, capsys) -> None:
    assert main(["table", str(store.folder)]) == 0
    out = capsys.readouterr().out
    frame = store.read()
    cell = frame[(frame.method == "mp") & (frame.repair == "reflow")]["top1"]
    assert f"{cell.mean():.2f} ± {cell.std():.2f} (2)" in out
    assert main(["table", str(store.folder), "--stat", "ci", "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert "% cells: mean [95% interval" in out and "(2)" in out


def _cells(columns: dict[str, list[np.ndarray]]) -> tuple[pd.DataFrame, dict[str, Outcomes]]:
    """A two-seed table at one sparsity from per-example correctness arrays."""
    rows, outcomes = [], {}
    labels = np.zeros(400, dtype=np.int64)
    for column, by_seed in columns.items():
        for seed, correct in enumerate(by_seed):
            rid = f"{column}-{seed}"
            rows.append(
                {
                    "sparsity": 0.8,
                    "column": column,
                    "seed": seed,
                    "run_id": rid,
                    "top1": 100 * correct.mean(),
                }
            )
            outcomes[rid] = Outcomes("order", pack(labels), pack((~correct).astype(np.int64)))
    return pd.DataFrame(rows), outcomes


def test_best_mark_goes_to_every_cell_not_significantly_worse() -> None:
    rng = np.random.default_rng(0)
    base = [rng.random(400) < 0.8 for _ in range(2)]
    near = [b.copy() for b in base]
    for n in near:  # 3 lost and 2 gained per seed: 6 vs 4 discordant, no significant loss
        lost, gained = np.flatnonzero(n)[:3], np.flatnonzero(~n)[:2]
        n[lost], n[gained] = False, True
    far = [rng.random(400) < 0.6 for _ in range(2)]
    cells, outcomes = _cells({"best": base, "near": near, "far": far})
    mean, std, count = seed_statistics(cells)
    marks = table_uncertainty(cells, mean, outcomes)
    assert marks.best.loc[0.8].to_dict() == {"best": True, "near": True, "far": False}
    text = render(mean, std, "markdown", 2, count, marks)
    assert text.count("**") == 4
    exact = table_uncertainty(cells, mean, {})  # nothing stored: only the best is marked
    assert exact.best.loc[0.8].to_dict() == {"best": True, "near": False, "far": False}
    assert not exact.tested


def test_compare_prints_one_line_per_sparsity(store, capsys) -> None:
    assert main(["compare", str(store.folder), "mp+reflow", "random"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("  0.5: ")
    assert "McNemar p" in lines[1] and "2 seeds" in lines[1]
    assert main(["compare", str(store.folder), "mp+reflow", "chita"]) == 2


def test_export_predictions(store, tmp_path, capsys) -> None:
    assert main(["export", str(store.folder), "--to", str(tmp_path), "--predictions"]) == 0
    capsys.readouterr()
    arrays = np.load(tmp_path / "predictions.npz")
    (order,) = {k.split("_")[-1] for k in arrays.files}
    predicted, labels = arrays[f"predicted_{order}"], arrays[f"labels_{order}"]
    accuracy = 100.0 * (predicted == labels).mean(axis=1)
    top1 = dict(zip(arrays[f"run_ids_{order}"], accuracy, strict=True))
    for row in store.read().itertuples():
        assert top1[row.run_id] == pytest.approx(row.top1, abs=1e-9)
    pytest.importorskip("pyarrow")
    assert (
        main(
            [
                "export",
                str(store.folder),
                "--to",
                str(tmp_path),
                "--format",
                "parquet",
                "--predictions",
            ]
        )
        == 0
    )
    long = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(long) == 8 * 300 and set(long.columns) >= {"run_id", "example", "predicted"}


def test_a_row_the_seed_cannot_change_is_computed_once_and_recorded_per_seed(store) -> None:
    frame = store.read().set_index(["method", "repair", "seed"])
    assert frame.loc[("mp", "none", 0), "seed_controls"] == "nothing"
    assert frame.loc[("mp", "reflow", 0), "seed_controls"] == "calibration draw"
    assert frame.loc[("random", "none", 0), "seed_controls"] == "the random mask"
    copy = frame.loc[("mp", "none", 1)]
    assert copy["seed_copy_of"] == 0 and copy["top1"] == frame.loc[("mp", "none", 0), "top1"]
    assert copy["run_id"] != frame.loc[("mp", "none", 0), "run_id"]
    for computed in [("mp", "reflow", 1), ("random", "none", 1), ("mp", "none", 0)]:
        assert pd.isna(frame.loc[computed, "seed_copy_of"]), computed
    outcomes = store.outcomes()
    assert outcomes[copy["run_id"]] == outcomes[frame.loc[("mp", "none", 0), "run_id"]]
