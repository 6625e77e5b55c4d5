"""Ranking methods across a sweep, as ML benchmark papers do (Demšar, JMLR 2006): each block (a
model, checkpoint, dataset and sparsity) ranks the method+repair columns by top-1; the Friedman
test asks whether the mean ranks differ at all, and the Nemenyi post-hoc test which pairs do,
drawn as a critical-difference diagram (`scikit-posthocs`, the ``stats`` extra)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy.stats import friedmanchisquare

from reflow.errors import ReflowError
from reflow.registry import missing_requirements
from reflow.tables import labelled_rows

BLOCK = ["model", "checkpoint", "dataset", "sparsity"]


@dataclass
class Ranking:
    #: Blocks × columns of mean top-1 (only columns present in every block).
    scores: pd.DataFrame
    #: Mean rank per column (1 = best).
    ranks: pd.Series
    friedman_statistic: float
    friedman_p: float
    #: Nemenyi p-values, columns × columns (None without scikit-posthocs).
    nemenyi: pd.DataFrame | None


def block_scores(results: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Blocks × columns of mean ``metric`` over seeds, keeping the columns every block has (a
    Friedman test needs complete blocks)."""
    cells = labelled_rows(results)
    table = cells.pivot_table(index=BLOCK, columns="column", values=metric, aggfunc="mean")
    return table.dropna(axis=1)


def rank_methods(results: pd.DataFrame, metric: str = "top1") -> Ranking:
    """Friedman over the blocks (and Nemenyi when scikit-posthocs is installed)."""
    scores = block_scores(results, metric)
    if scores.shape[1] < 3 or scores.shape[0] < 2:
        raise ReflowError(
            f"ranking needs at least 3 columns present in at least 2 blocks (model, sparsity); "
            f"these rows give {scores.shape[1]} columns in {scores.shape[0]} blocks"
        )
    statistic, p = friedmanchisquare(*(scores[c].to_numpy() for c in scores.columns))
    ranks = scores.rank(axis=1, ascending=False).mean().sort_values()
    nemenyi = None
    if missing_requirements("ranking", ("scikit_posthocs",), "stats") is None:
        import scikit_posthocs as sp

        nemenyi = sp.posthoc_nemenyi_friedman(scores.reset_index(drop=True))
    return Ranking(scores, ranks, float(statistic), float(p), nemenyi)
