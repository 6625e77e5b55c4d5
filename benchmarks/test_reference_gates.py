"""Accuracy gates against the recorded references (benchmarks/reference/MODEL_DATASET.csv).

A method fails when its top-1 moves away from its reference by more than REFLOW_GATE_TOLERANCE
points (default 0.5; CPU runs here at one thread count are deterministic to far better than
that), in either direction: a drop is a regression, a rise a reference that no longer says what
the code computes (11 of M-FAC's rows once sat 0.01-1.34 points off what their configuration
computes with 2 threads, unseen by a one-sided gate); refresh such rows with
`make_reference.py --methods NAME` and say why in the commit. The suite also fails
when a reference and the registry disagree on the set of methods, or when a default setting or
option changed value since the reference was recorded (the row identity holds only non-default
values, so this compares the stored full configs): `python benchmarks/make_reference.py`.
Where a reference records its rows' probes (`*_probes.csv`), each gated row's per-layer variance
ratios must stay within REFLOW_GATE_RATIO_TOLERANCE of them (relative; default 0.02).

By default the gates run each reference's CI part (ResNet-20: every method at 0.7; MobileNetV1:
four cheap methods at 0.8; the seeds references: MP at ResNet-20's 0.7 and MobileNetV1's 0.8 for
seeds 0-2). The MobileNetV1 reference holds every registered method (OBC at 0.8 only, as its
sweep runs it).
REFLOW_GATE_SPARSITIES=0.4,0.9 or =all and REFLOW_GATE_METHODS=all (or a comma list) run more.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
from make_reference import (
    NOT_YET_RECORDED,
    PROBE_KEY,
    REFERENCES,
    SPARSITIES,
    Reference,
    recorded_methods,
)
from reflow.baselines import list_methods

if TYPE_CHECKING:
    from conftest import GateRows  # benchmarks/conftest.py

pytestmark = [pytest.mark.accuracy, pytest.mark.slow]

TOLERANCE = float(os.environ.get("REFLOW_GATE_TOLERANCE", "0.5"))
RATIO_TOLERANCE = float(os.environ.get("REFLOW_GATE_RATIO_TOLERANCE", "0.02"))
_SPARSITIES = os.environ.get("REFLOW_GATE_SPARSITIES")
_METHODS = os.environ.get("REFLOW_GATE_METHODS")


def gate_sparsities(reference: Reference) -> tuple[float, ...]:
    if _SPARSITIES is None:
        return reference.ci_sparsities
    return SPARSITIES if _SPARSITIES == "all" else tuple(float(s) for s in _SPARSITIES.split(","))


def gate_methods(reference: Reference) -> tuple[str, ...] | None:
    if _METHODS is None:
        return reference.ci_methods
    return None if _METHODS == "all" else tuple(_METHODS.split(","))


#: ResNet-20's gate sparsities (the other gates share its rows).
GATE_SPARSITIES = gate_sparsities(REFERENCES["resnet20"])


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def gated(request, run_rows) -> tuple[Reference, GateRows]:
    """A reference and the rows of its gated part, measured now."""
    reference = REFERENCES[request.param]
    experiments = reference.subset(gate_sparsities(reference), gate_methods(reference))
    return reference, run_rows(experiments)


@pytest.mark.parametrize("model", sorted(REFERENCES))
def test_reference_and_registry_name_the_same_methods(model) -> None:
    """A complete reference names every registered method; a partial one exactly its list."""
    reference = REFERENCES[model]
    recorded, registered = set(reference.read().method), set(list_methods())
    expected = set(recorded_methods()) if reference.methods is None else set(reference.methods)
    assert set(NOT_YET_RECORDED) <= registered, "a pending method is no longer registered"
    assert expected <= registered, f"{model}: not registered: {sorted(expected - registered)}"
    assert recorded == expected, (
        f"{model}: only in the reference: {sorted(recorded - expected)}; not recorded: "
        f"{sorted(expected - recorded)}; regenerate with `python benchmarks/make_reference.py`"
    )


def test_accuracy_matches_reference(gated) -> None:
    reference, rows = gated
    recorded, measured = reference.read(), rows.read()
    assert len(measured), "the gate ran no row"
    failures = []
    for row in measured.itertuples():
        ref = recorded[
            (recorded.method == row.method)
            & (recorded.repair == row.repair)
            & (recorded.sparsity == row.sparsity)
            & (recorded.seed == row.seed)
            & (recorded.config_hash == row.config_hash)
        ]
        label = f"{row.model} {row.method}+{row.repair} @ {row.sparsity} seed {row.seed}"
        if len(ref) != 1:
            failures.append(f"{label}: no reference row with config {row.config_hash}")
            continue
        changed = changed_defaults(ref.config.iloc[0], row.config)
        if changed:
            failures.append(f"{label}: defaults changed since the reference: {changed}")
        expected = float(ref.top1.iloc[0])
        print(f"{label}: measured {row.top1:.2f}, reference {expected:.2f}")
        if row.top1 < expected - TOLERANCE:
            failures.append(f"{label}: {row.top1:.2f} < reference {expected:.2f} - {TOLERANCE}")
        elif row.top1 > expected + TOLERANCE:
            failures.append(
                f"{label}: {row.top1:.2f} > reference {expected:.2f} + {TOLERANCE}: the reference "
                f"is stale; refresh it (make_reference.py --methods {row.method}) and say why"
            )
    assert not failures, "\n".join(failures)


def test_variance_ratios_match_reference(gated) -> None:
    """Each gated row's per-layer output-variance ratios (what the collapse claims and plots
    rest on) stay within RATIO_TOLERANCE (relative) of the recorded ones, layer by layer."""
    reference, rows = gated
    recorded = reference.read_probes()
    if recorded.empty:
        pytest.skip(f"{reference.probes_path.name} not recorded yet (make_reference.py writes it)")
    both = rows.read("probes").merge(recorded, on=PROBE_KEY, how="left", suffixes=("", "_ref"))
    assert len(both), "the gate measured no probe row"
    missing = both[both.ratio_ref.isna()]
    assert missing.empty, f"measured probes with no recorded row:\n{missing[PROBE_KEY]}"
    off = both[(both.ratio - both.ratio_ref).abs() > RATIO_TOLERANCE * both.ratio_ref.abs()]
    assert off.empty, (
        f"variance ratios moved beyond {RATIO_TOLERANCE:.0%}:\n"
        + off[[*PROBE_KEY, "layer", "ratio", "ratio_ref"]].to_string()
    )


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


@pytest.mark.parametrize(
    "model", [name.removesuffix("-seeds") for name in REFERENCES if name.endswith("-seeds")]
)
def test_seed_zero_of_the_seeds_reference_is_the_main_reference(model) -> None:
    """A seeds reference's seed-0 rows are the model's main reference rows (same configuration,
    same top-1), so its spread is measured around the numbers the paper tables print."""
    seeds = REFERENCES[f"{model}-seeds"].read()
    main = REFERENCES[model].read()
    keys = ["method", "repair", "sparsity", "config_hash"]
    zero = seeds[seeds.seed == 0].merge(main, on=keys, how="left", suffixes=("", "_main"))
    assert len(zero) == len(seeds) // 3, "the seeds reference does not hold seeds 0-2 alike"
    assert zero.top1_main.notna().all(), zero[zero.top1_main.isna()][keys]
    assert (zero.top1 == zero.top1_main).all(), zero[zero.top1 != zero.top1_main][keys]
