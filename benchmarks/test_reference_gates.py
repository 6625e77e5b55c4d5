"""Accuracy gates against the recorded reference (benchmarks/reference/resnet20_cifar10jpeg.csv).

A method fails when its top-1 falls below its reference by more than REFLOW_GATE_TOLERANCE points
(default 0.5; CPU runs here are deterministic to far better than that). The suite also fails when
the reference and the registry disagree on the set of methods, or when a default setting or
option changed value since the reference was recorded (the row identity holds only non-default
values, so this compares the stored full configs): `python benchmarks/make_reference.py`.
By default the gates run sparsity 0.7; REFLOW_GATE_SPARSITIES=0.4,0.9 or =all runs more.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from make_reference import REFERENCE, SPARSITIES, reference_grid
from reflow.baselines import list_methods

pytestmark = [pytest.mark.accuracy, pytest.mark.slow]

TOLERANCE = float(os.environ.get("REFLOW_GATE_TOLERANCE", "0.5"))
_chosen = os.environ.get("REFLOW_GATE_SPARSITIES", "0.7")
GATE_SPARSITIES = SPARSITIES if _chosen == "all" else tuple(float(s) for s in _chosen.split(","))


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE)


@pytest.fixture(scope="module")
def measured(run_rows) -> pd.DataFrame:
    return run_rows(reference_grid(sparsities=GATE_SPARSITIES)).read()


def test_reference_and_registry_name_the_same_methods(reference) -> None:
    recorded, registered = set(reference.method), set(list_methods())
    assert recorded == registered, (
        f"only in the reference: {sorted(recorded - registered)}; only registered: "
        f"{sorted(registered - recorded)}; regenerate with `python benchmarks/make_reference.py`"
    )


@pytest.mark.parametrize("repair", ["none", "reflow"])
@pytest.mark.parametrize("method", list_methods())
def test_accuracy_not_below_reference(method, repair, reference, measured) -> None:
    for sparsity in GATE_SPARSITIES:
        ref = reference[
            (reference.method == method)
            & (reference.repair == repair)
            & (reference.sparsity == sparsity)
        ]
        now = measured[
            (measured.method == method)
            & (measured.repair == repair)
            & (measured.sparsity == sparsity)
        ]
        assert len(ref) == 1, f"no reference row for {method}+{repair} at {sparsity}"
        assert len(now) == 1
        assert now.config_hash.iloc[0] == ref.config_hash.iloc[0]
        changed = changed_defaults(ref.config.iloc[0], now.config.iloc[0])
        assert not changed, f"defaults changed since the reference was recorded: {changed}"
        top1, expected = float(now.top1.iloc[0]), float(ref.top1.iloc[0])
        print(f"{method}+{repair} @ {sparsity}: measured {top1:.2f}, reference {expected:.2f}")
        assert top1 >= expected - TOLERANCE


def changed_defaults(recorded: str, current: str) -> dict:
    """Values present in both full configs that differ (a new option is not a change)."""

    def flat(text: str) -> dict:
        out = {}
        for key, value in json.loads(text).items():
            if isinstance(value, dict):
                out |= {f"{key}.{k}": v for k, v in value.items()}
            else:
                out[key] = value
        return out

    a, b = flat(recorded), flat(current)
    return {k: (a[k], b[k]) for k in a.keys() & b.keys() if a[k] != b[k]}
