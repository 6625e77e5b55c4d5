"""Correctness gates for the 2024-2025 methods on resnet20 + cifar10-jpeg (our own correctness,
not a paper claim), every value printed:

- ALPS: per layer, its reconstruction error is no larger than SparseGPT's at the same per-layer
  counts on the same inputs (both with the dense model's inputs, so both see the same H);
- SNOWS: per layer, its K-step loss is no larger than that of its starting mask without any
  update (small settings that keep CI short: K = 4, 128 images, one pass of at most 20 CG
  steps; the sweep's CPU settings are asv's);
- OSSCAR: per consumer layer, its reconstruction error is no larger than that of the reference's
  magnitude channel choice refit by the same least squares.

CI checks sparsity 0.7 (OSSCAR 0.5); REFLOW_GATE_SPARSITIES=all checks 0.4 to 0.9.
"""

from __future__ import annotations

import pandas as pd
import pytest
from test_reference_gates import GATE_SPARSITIES

from reflow.grid import Grid
from reflow.settings import Settings

pytestmark = [pytest.mark.accuracy, pytest.mark.slow]

#: SNOWS small enough for CI (the gate checks our solver, not the method's best accuracy).
SNOWS_GATE = {
    "k_step": "4",
    "samples": "128",
    "batch_size": "128",
    "newton_steps": "1",
    "cg_iter": "20",
}
DENSE_INPUTS = {"alps": {"inputs": "dense"}, "sparsegpt": {"inputs": "dense"}}


def _layers(run_rows, methods: tuple[str, ...], sparsities, options) -> pd.DataFrame:
    grid = Grid(("resnet20",), ("cifar10-jpeg",), methods, ("none",), sparsities)
    frame = run_rows(grid, Settings(options=options)).read("layers")
    return frame[frame.repair == "none"]


@pytest.mark.parametrize("sparsity", GATE_SPARSITIES)
def test_alps_reconstructs_no_worse_than_sparsegpt(run_rows, sparsity) -> None:
    frame = _layers(run_rows, ("alps", "sparsegpt"), GATE_SPARSITIES, DENSE_INPUTS)
    frame = frame[frame.sparsity == sparsity]
    alps = frame[frame.method == "alps"].set_index("layer").recon_error
    sparsegpt = frame[frame.method == "sparsegpt"].set_index("layer").recon_error
    assert len(alps) == len(sparsegpt) == 20, "one row per prunable layer of resnet20"
    for layer in alps.index:
        print(
            f"@ {sparsity} {layer}: ‖ΔWX‖²/N alps {2 * alps[layer]:.6g}, "
            f"sparsegpt {2 * sparsegpt[layer]:.6g}"
        )
    worse = alps[alps > sparsegpt[alps.index] * (1 + 1e-6)]
    assert worse.empty, worse.index.tolist()


@pytest.mark.parametrize("sparsity", GATE_SPARSITIES)
def test_snows_lowers_every_layers_k_step_loss(run_rows, sparsity) -> None:
    frame = _layers(run_rows, ("snows",), GATE_SPARSITIES, {"snows": SNOWS_GATE})
    rows = frame[frame.sparsity == sparsity]
    assert len(rows) == 20
    for row in rows.itertuples():
        print(
            f"snows @ {sparsity} {row.layer}: K-step loss masked {row.kstep_loss_masked:.6g}, "
            f"warm start {row.kstep_loss_start:.6g}, final {row.kstep_loss:.6g}, "
            f"CG steps {row.cg_iterations:.0f}"
        )
    worse = rows[rows.kstep_loss > rows.kstep_loss_masked * (1 + 1e-6)]
    assert worse.empty, worse.layer.tolist()


def test_osscar_reconstructs_no_worse_than_magnitude_channels(run_rows) -> None:
    frame = _layers(run_rows, ("osscar",), (0.5,), {})
    frame = frame[frame.recon_error.notna()]
    assert len(frame) == 9, "one row per residual block's conv2"
    for row in frame.itertuples():
        print(
            f"osscar @ 0.5 {row.layer}: ‖ΔWX‖²/N {2 * row.recon_error:.6g}, magnitude channels "
            f"{2 * row.recon_error_magnitude:.6g}, refit {2 * row.recon_error_magnitude_refit:.6g}"
        )
    worse = frame[frame.recon_error > frame.recon_error_magnitude_refit * (1 + 1e-6)]
    assert worse.empty, worse.layer.tolist()
