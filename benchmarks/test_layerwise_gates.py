"""Correctness gate for the layer-wise methods on resnet20 + cifar10-jpeg (our own correctness,
not a paper claim): per layer, the reconstruction error ‖(W − Ŵ)X‖² of ``obc`` and ``sparsegpt``
is no larger than that of the layer's magnitude mask at the same sparsity without an update, on
the same calibration inputs (the ``layers`` table records both). CI checks sparsity 0.7;
REFLOW_GATE_SPARSITIES=all checks 0.4 to 0.9. Every value is printed.
"""

from __future__ import annotations

import pandas as pd
import pytest
from test_reference_gates import GATE_SPARSITIES

from reflow.grid import Grid

pytestmark = [pytest.mark.accuracy, pytest.mark.slow]


@pytest.fixture(scope="module")
def layers(run_rows) -> pd.DataFrame:
    grid = Grid(("resnet20",), ("cifar10-jpeg",), ("obc", "sparsegpt"), ("none",), GATE_SPARSITIES)
    frame = run_rows(grid).read("layers")
    return frame[frame.repair == "none"]


@pytest.mark.parametrize("sparsity", GATE_SPARSITIES)
@pytest.mark.parametrize("method", ["obc", "sparsegpt"])
def test_reconstruction_no_worse_than_the_magnitude_mask(layers, method, sparsity) -> None:
    rows = layers[(layers.method == method) & (layers.sparsity == sparsity)]
    assert len(rows) == 20, "one row per prunable layer of resnet20"
    for row in rows.itertuples():
        print(
            f"{method} @ {sparsity} {row.layer}: ‖ΔWX‖²/N {2 * row.recon_error:.6g}, magnitude "
            f"mask {2 * row.recon_error_magnitude:.6g}"
        )
    worse = rows[rows.recon_error > rows.recon_error_magnitude * (1 + 1e-9)]
    assert worse.empty, worse.layer.tolist()
