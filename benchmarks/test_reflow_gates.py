"""Accuracy gates for the harness and REFLOW on resnet20 + cifar10-jpeg (fine-tuned checkpoint).

These guard our own correctness (loading, masking, recalibration, probes); thresholds come from
measurements on this machine with wide margins, and every measured value is printed.
"""

from __future__ import annotations

import pandas as pd
import pytest

from reflow.grid import Grid

pytestmark = [pytest.mark.accuracy, pytest.mark.slow]

GRID = Grid(("resnet20",), ("cifar10-jpeg",), ("mp",), ("none", "reflow"), (0.8, 0.9), (0,))


@pytest.fixture(scope="module")
def tables(run_rows) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = run_rows(GRID)
    results = store.read()
    results = results[results.method == "mp"]
    print("\n" + results[["method", "repair", "sparsity", "top1", "top_class_share"]].to_string())
    return results, store.read("probes")


def _top1(results: pd.DataFrame, repair: str, sparsity: float) -> float:
    row = results[(results.repair == repair) & (results.sparsity == sparsity)]
    assert len(row) == 1
    return float(row["top1"].iloc[0])


def test_dense_accuracy_equals_manifest(tables) -> None:
    results, _ = tables
    dense, recorded = results["dense_top1"].iloc[0], results["recorded_dense_top1"].iloc[0]
    print(f"dense top-1 measured {dense:.2f}, manifest {recorded:.2f}")
    assert dense == pytest.approx(recorded, abs=0.01)


def test_mp_at_90_collapses(tables) -> None:
    results, _ = tables
    row = results[(results.repair == "none") & (results.sparsity == 0.9)].iloc[0]
    print(f"mp@0.9 top-1 {row.top1:.2f}, share of the top class {row.top_class_share:.3f}")
    assert row.top1 < 20.0
    assert row.top_class_share > 0.5


@pytest.mark.parametrize(("sparsity", "margin"), [(0.9, 20.0), (0.8, 10.0)])
def test_reflow_far_above_mp(tables, sparsity: float, margin: float) -> None:
    results, _ = tables
    mp, reflowed = _top1(results, "none", sparsity), _top1(results, "reflow", sparsity)
    print(f"sparsity {sparsity}: mp {mp:.2f} -> mp+reflow {reflowed:.2f}")
    assert reflowed > mp + margin


def test_deepest_bn_variance_collapses_and_recovers(tables) -> None:
    _, probes = tables
    at90 = probes[(probes.method == "mp") & (probes.sparsity == 0.9)]
    deepest = at90[at90.norm_index == at90.norm_index.max()]
    before = float(deepest[deepest.repair == "none"].ratio.iloc[0])
    after = float(deepest[deepest.repair == "reflow"].ratio.iloc[0])
    layer = deepest.layer.iloc[0]
    print(f"deepest BN ({layer}) variance ratio: mp {before:.3f}, mp+reflow {after:.3f}")
    assert before < 0.4
    assert 0.5 < after < 1.5
