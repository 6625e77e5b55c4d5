"""The uncertainty of a table's cells, from the rows' stored per-example outcomes: each cell's
two-level bootstrap interval, and which cells are not significantly worse than the best of their
row (exact McNemar paired by seed, Holm-corrected across the table), so a tie is shown as one.

A cell is the rows of one (sparsity, column) over seeds. Cells compare only on rows that share
seeds and one evaluated example order; a cell without stored outcomes (an old store) gets no
interval and no test ("n/a"), never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from reflow.outcomes import Outcomes
from reflow.stats import RESAMPLES, Comparison, Resampler, compare, holm, percentile_interval

ALPHA = 0.05


@dataclass
class CellOutcomes:
    """One cell's per-example correctness by seed, on one example order."""

    eval_order: str
    by_seed: dict[int, np.ndarray]
    #: Per seed, its mean over each bootstrap resample of the examples (`resample_cells`).
    resampled: dict[int, np.ndarray] | None = None

    def stacked(self, seeds: list[int]) -> np.ndarray:
        return np.stack([self.by_seed[s] for s in seeds])

    def per_seed(self, seeds: list[int]) -> np.ndarray | None:
        return np.stack([self.resampled[s] for s in seeds]) if self.resampled else None


def cell_outcomes(rows: pd.DataFrame, outcomes: Mapping[str, Outcomes]) -> CellOutcomes | None:
    """The cell's outcomes, or None when a row has none or the rows' example orders differ."""
    found = [outcomes.get(str(rid)) for rid in rows["run_id"]]
    if not found or any(o is None for o in found):
        return None
    orders = {o.eval_order for o in found}  # type: ignore[union-attr]
    if len(orders) != 1:
        return None
    by_seed = {int(s): o.correct() for s, o in zip(rows["seed"], found, strict=True)}  # type: ignore[union-attr]
    return CellOutcomes(orders.pop(), by_seed)


class Resamplers:
    """One `Resampler` per number of examples, so every cell of a table on the same examples
    is resampled with the same indices (and a table's intervals are reproducible)."""

    def __init__(self, resamples: int = RESAMPLES, seed: int = 0) -> None:
        self.resamples = resamples
        self.seed = seed
        self._by_n: dict[int, Resampler] = {}

    def __call__(self, n: int) -> Resampler:
        if n not in self._by_n:
            self._by_n[n] = Resampler(n, self.resamples, self.seed)
        return self._by_n[n]


def resample_cells(cells: list[CellOutcomes], resamplers: Resamplers) -> None:
    """Fill each cell's per-seed resampled means: one matrix product per example count for the
    whole table, rather than one per cell and per comparison."""
    by_n: dict[int, list[tuple[CellOutcomes, int]]] = {}
    for cell in cells:
        for seed, correct in cell.by_seed.items():
            by_n.setdefault(len(correct), []).append((cell, seed))
    for n, members in by_n.items():
        matrix = np.stack([cell.by_seed[seed] for cell, seed in members]).astype(np.float32)
        means = resamplers(n).per_seed(matrix)
        for (cell, seed), row in zip(members, means, strict=True):
            cell.resampled = (cell.resampled or {}) | {seed: row}


def paired(a: CellOutcomes, b: CellOutcomes, resamplers: Resamplers) -> Comparison | None:
    """A − B on their common seeds, or None when they share no seed or no example order."""
    seeds = sorted(set(a.by_seed) & set(b.by_seed))
    if not seeds or a.eval_order != b.eval_order:
        return None
    left, right = a.stacked(seeds), b.stacked(seeds)
    pa, pb = a.per_seed(seeds), b.per_seed(seeds)
    cached = (pa, pb) if pa is not None and pb is not None else None
    return compare(left, right, resamplers(left.shape[1]), per_seed=cached)


@dataclass
class TableUncertainty:
    """Per cell (sparsity rows × columns): interval bounds (NaN: n/a) and the best mark (the
    best cell, and every cell not significantly worse than it; False where untested)."""

    low: pd.DataFrame
    high: pd.DataFrame
    best: pd.DataFrame
    #: Whether ties were tested (some cells had outcomes), for the table's legend.
    tested: bool


def table_uncertainty(
    cells: pd.DataFrame,
    mean: pd.DataFrame,
    outcomes: Mapping[str, Outcomes],
    resamplers: Resamplers | None = None,
    alpha: float = ALPHA,
) -> TableUncertainty:
    """Intervals and best marks for a table whose rows ``cells`` carry ``sparsity``,
    ``column``, ``seed`` and ``run_id``; ``mean`` is its mean table (sparsity × column)."""
    resamplers = resamplers or Resamplers()
    low = pd.DataFrame(np.nan, index=mean.index, columns=mean.columns)
    high = low.copy()
    best = mean.eq(mean.max(axis=1), axis=0) & mean.notna()
    found: dict[tuple, CellOutcomes] = {}
    for (sparsity, column), rows in cells.groupby(["sparsity", "column"], sort=False):
        cell = cell_outcomes(rows.sort_values("seed"), outcomes)
        if cell is not None and column in mean.columns:
            found[sparsity, column] = cell
    resample_cells(list(found.values()), resamplers)
    for (sparsity, column), cell in found.items():
        seeds = sorted(cell.by_seed)
        resampler = resamplers(len(cell.by_seed[seeds[0]]))
        lo, hi = percentile_interval(resampler.mix(cell.per_seed(seeds)))
        low.loc[sparsity, column], high.loc[sparsity, column] = 100 * lo, 100 * hi
    tests: list[tuple[tuple, Comparison]] = []
    for sparsity, row in mean.iterrows():
        if row.isna().all():
            continue
        top = row.idxmax()
        if (sparsity, top) not in found:
            continue
        for column in mean.columns:
            if column == top or (sparsity, column) not in found:
                continue
            result = paired(found[sparsity, top], found[sparsity, column], resamplers)
            if result is not None:
                tests.append(((sparsity, column), result))
    adjusted = holm([c.p_value for _, c in tests]) if tests else []
    for ((sparsity, column), _), p in zip(tests, adjusted, strict=True):
        best.loc[sparsity, column] = p >= alpha
    return TableUncertainty(low, high, best, bool(found))


def compare_columns(
    cells: pd.DataFrame,
    outcomes: Mapping[str, Outcomes],
    a: str,
    b: str,
    resamplers: Resamplers | None = None,
) -> list[tuple[float, Comparison | None]]:
    """A − B at every sparsity both columns of `labelled_rows` ``cells`` have, Holm-corrected
    across those sparsities (None where the rows have no comparable stored outcomes)."""
    resamplers = resamplers or Resamplers()
    sparsities = sorted(
        set(cells.loc[cells["column"] == a, "sparsity"])
        & set(cells.loc[cells["column"] == b, "sparsity"])
    )
    found: list[tuple[float, Comparison | None]] = []
    for sparsity in sparsities:
        at = cells[cells["sparsity"] == sparsity]
        left = cell_outcomes(at[at["column"] == a].sort_values("seed"), outcomes)
        right = cell_outcomes(at[at["column"] == b].sort_values("seed"), outcomes)
        result = paired(left, right, resamplers) if left and right else None
        found.append((sparsity, result))
    tested = [c for _, c in found if c is not None]
    adjusted = iter(holm([c.p_value for c in tested]) if tested else [])
    return [(s, replace(c, p_holm=next(adjusted)) if c is not None else None) for s, c in found]
