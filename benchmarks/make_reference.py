"""Regenerate the recorded reference table that the accuracy gates compare against.

    REFLOW_HOME=../shared python benchmarks/make_reference.py [--runs runs/reference]

Runs every registered method × {none, reflow} × sparsity 0.4–0.9, seed 0, default settings, on
resnet20 + cifar10-jpeg (resumable: rows already in --runs are kept), then writes the columns the
gates need to benchmarks/reference/resnet20_cifar10jpeg.csv. Commit that file with the change
that moved the numbers, and say why in the commit message.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reflow.baselines import list_methods

from reflow.harness import Grid, Settings, pick_device, run_grid
from reflow.plan import row_config_hash
from reflow.results import ResultStore, write_csv_atomic

REFERENCE = Path(__file__).resolve().parent / "reference" / "resnet20_cifar10jpeg.csv"
SPARSITIES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
REPAIRS = ("none", "reflow")
COLUMNS = [
    "model",
    "checkpoint",
    "dataset",
    "method",
    "repair",
    "sparsity",
    "seed",
    "config_hash",
    "top1",
    "top5",
    "dense_top1",
    "sparsity_achieved",
    "min_layer_density",
    "top_class_share",
    "t_select",
    "t_repair",
    "t_evaluate",
    "device",
    "torch",
    "git_commit",
    "config",
]


def reference_grid(
    methods: tuple[str, ...] | None = None, sparsities: tuple[float, ...] = SPARSITIES
) -> Grid:
    return Grid(
        ("resnet20",),
        ("cifar10-jpeg",),
        methods or tuple(list_methods()),
        REPAIRS,
        sparsities,
        (0,),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/reference"), help="results folder")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    store = ResultStore(args.runs)
    run_grid(reference_grid(), store, Settings(), pick_device(args.device))
    frame = store.read()
    frame = frame[
        frame.error.isna()
        & frame.method.isin(list_methods())
        & frame.repair.isin(REPAIRS)
        & frame.sparsity.isin(SPARSITIES)
        & (frame.config_hash.isin(_default_hashes()))
    ]
    frame = frame.sort_values(["method", "repair", "sparsity"])[COLUMNS]
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(frame, REFERENCE)
    print(f"wrote {len(frame)} rows to {REFERENCE}")


def _default_hashes() -> set[str]:
    return {row_config_hash(m, r, Settings()) for m in list_methods() for r in REPAIRS}


if __name__ == "__main__":
    main()
