"""The factorial design of a run: a `Grid` of names and values, and an `Experiment` (a named grid
under one or more settings combinations). Validated here for names and value types; the
model-specific checks are `reflow.plan`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass

from reflow import baselines
from reflow.data import list_datasets
from reflow.errors import ReflowError, unknown_name
from reflow.masks import check_sparsity
from reflow.repairs import list_repairs
from reflow.settings import Settings
from reflow.zoo import get_entry


@dataclass(frozen=True)
class Grid:
    """The factorial design of a run."""

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    repairs: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    checkpoints: tuple[str | None, ...] = (None,)

    def validate(self) -> None:
        """Raise on any bad name or value (the model-specific checks are `reflow.plan`'s)."""
        for seq, what in (
            (self.models, "model"),
            (self.datasets, "dataset"),
            (self.methods, "method"),
            (self.repairs, "repair"),
            (self.sparsities, "sparsity"),
        ):
            if not seq:
                raise ReflowError(f"no {what} given")
            if what != "sparsity" and not all(isinstance(x, str) for x in seq):
                raise ReflowError(f"{what} names must be strings, got {list(seq)!r}")
        for m in self.models:
            get_entry(m)
        for d in self.datasets:
            if d not in list_datasets():
                raise unknown_name("dataset", d, list_datasets())
        for m in self.methods:
            baselines.get_method_class(m)
        for r in self.repairs:
            if r not in list_repairs():
                raise unknown_name("repair", r, list_repairs())
        for s in self.sparsities:
            check_sparsity(s)
        for seed in self.seeds:
            check_seed(seed)
        for checkpoint in self.checkpoints:
            if checkpoint is not None and not isinstance(checkpoint, str):
                raise ReflowError(f"checkpoints are names or paths, got {checkpoint!r}")

    def size(self) -> int:
        return math.prod(
            map(
                len,
                (
                    self.models,
                    self.checkpoints,
                    self.datasets,
                    self.methods,
                    self.repairs,
                    self.sparsities,
                    self.seeds,
                ),
            )
        )


#: Seeds are stored as SQLite INTEGER and seed torch generators: both take [0, 2**63).
SEED_LIMIT = 2**63


def check_seed(seed: object) -> None:
    """Seeds are integers in [0, 2**63): a float (1.9) would be truncated to another seed."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ReflowError(f"seeds are integers in [0, 2**63), got {seed!r}")


@dataclass(frozen=True)
class Experiment:
    """A named grid run under one or more settings combinations."""

    name: str
    grid: Grid
    settings: tuple[Settings, ...]

    def size(self) -> int:
        return self.grid.size() * len(self.settings)
