"""Sweeps declared in a TOML file: one or more experiments, each a grid of models × checkpoints ×
datasets × methods × repairs × sparsities × seeds, times any list-valued harness setting
(calibration batches, batch size, recalibrated layers, …). One results folder for all of them,
resumable like `reflow run`, with one progress bar and time-left estimate over every row.

    [[experiment]]
    name = "fig11-calibration-batches"
    models = ["resnet20"]
    datasets = ["cifar10-jpeg"]
    methods = ["mp"]
    repairs = ["reflow"]
    sparsities = [0.7, 0.8, 0.9]
    seeds = [0, 1, 2]
    [experiment.settings]
    calib_batches = [1, 2, 5, 10, 20, 50]
    [experiment.options.wf_u]        # method options, as --set wf_u.num_grads=...
    num_grads = 1000
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from pathlib import Path

from reflow.errors import ReflowError
from reflow.grid import Experiment, Grid
from reflow.masks import Pattern
from reflow.settings import Settings

_GRID_KEYS = {"models", "checkpoints", "datasets", "methods", "repairs", "sparsities", "seeds"}
_SETTING_KEYS = {f.name for f in dataclasses.fields(Settings)} - {"options"}


def _as_tuple(value: object) -> tuple:
    return tuple(value) if isinstance(value, list) else (value,)


def parse_experiment(table: dict, index: int) -> list[Experiment]:
    """One experiment, or one per N:M pattern when patterns fix the sparsity (no sparsities)."""
    if not isinstance(table, dict):
        raise ReflowError(
            f"experiment {index + 1} is {type(table).__name__}, not a table; declare each "
            "experiment as [[experiment]] (double brackets)"
        )
    name = str(table.get("name", f"experiment {index + 1}"))
    for key in ("settings", "options"):
        if not isinstance(table.get(key, {}), dict):
            raise ReflowError(f"{name}: {key} must be a table ([experiment.{key}])")
    for method, opts in table.get("options", {}).items():
        if not isinstance(opts, dict):
            raise ReflowError(
                f"{name}: options.{method} must be a table ([experiment.options.{method}])"
            )
    unknown = set(table) - _GRID_KEYS - {"name", "settings", "options"}
    if unknown:
        raise ReflowError(
            f"{name}: unknown keys {sorted(unknown)}; grid keys: {sorted(_GRID_KEYS)}"
        )
    axes = dict(table.get("settings", {}))
    bad = set(axes) - _SETTING_KEYS
    if bad:
        raise ReflowError(f"{name}: unknown settings {sorted(bad)}; valid: {sorted(_SETTING_KEYS)}")
    if "sparsities" not in table and "pattern" in axes:
        return [
            experiment
            for pattern in _as_tuple(axes["pattern"])
            for experiment in parse_experiment(
                {
                    **table,
                    "name": f"{name} [{pattern}]",
                    "sparsities": [_pattern_sparsity(name, pattern)],
                    "settings": {**axes, "pattern": pattern},
                },
                index,
            )
        ]
    missing = {"models", "datasets", "methods", "sparsities"} - set(table)
    if missing:
        raise ReflowError(f"{name}: missing {sorted(missing)}")
    grid = Grid(
        models=_as_tuple(table["models"]),
        datasets=_as_tuple(table["datasets"]),
        methods=_as_tuple(table["methods"]),
        repairs=_as_tuple(table.get("repairs", ["none", "reflow"])),
        sparsities=_as_tuple(table["sparsities"]),
        seeds=_as_tuple(table.get("seeds", [0])),
        checkpoints=_as_tuple(table.get("checkpoints", [None])),
    )
    options = {
        m: {k: str(v) for k, v in opts.items()} for m, opts in table.get("options", {}).items()
    }
    keys = list(axes)
    combos = itertools.product(*(_as_tuple(axes[k]) for k in keys))
    try:
        settings = tuple(
            Settings(**dict(zip(keys, c, strict=True)), options=options) for c in combos
        )
    except ReflowError as exc:
        raise ReflowError(f"{name}: {exc}") from None
    grid.validate()
    return [Experiment(name, grid, settings or (Settings(options=options),))]


def _pattern_sparsity(name: str, pattern: object) -> float:
    try:
        return Pattern.parse(str(pattern)).sparsity
    except ReflowError as exc:
        raise ReflowError(f"{name}: {exc}") from None


def load_sweep(path: Path) -> list[Experiment]:
    """Parse and validate every experiment of a sweep file before anything runs."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ReflowError(f"sweep file not found: {Path(path).resolve()}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ReflowError(f"{path} is not valid TOML: {exc}") from exc
    tables = document.get("experiment", [])
    if isinstance(tables, dict):
        raise ReflowError(
            f"{path}: experiments are declared as [[experiment]] (an array of tables), not "
            "[experiment]; write double brackets"
        )
    if not tables:
        raise ReflowError(f"{path} declares no [[experiment]]")
    return [e for i, t in enumerate(tables) for e in parse_experiment(t, i)]
