"""Uncertainty for every number a table prints: seed summaries, a two-level (seeds, then test
examples) bootstrap for a cell's accuracy and for the paired difference of two cells, the exact
McNemar test on discordant examples, and Holm's correction across one table's comparisons.

Two sources of noise make a top-1 uncertain: the seed (calibration draw, gradient draw, random
masks) and the finite test set. The bootstrap here resamples both: seeds with replacement, then
test examples with replacement, with the *same* example indices for every seed and for both
compared cells (the examples are paired across rows evaluated on one order). The example
resamples are drawn once per `Resampler` as a count matrix, so a whole table's intervals are one
matrix product. With one seed it is the ordinary paired percentile bootstrap, which
`scipy.stats.bootstrap` computes too (a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from reflow.errors import ReflowError

RESAMPLES = 2000
LEVEL = 0.95


def seed_summary(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; NaN for one value) and n, as pandas computes."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ReflowError("no values to summarise")
    std = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return float(array.mean()), std, int(array.size)


def accuracy_variance(top1: Sequence[float], examples: int) -> float:
    """Variance (points²) of a mean top-1 over seeds without per-example outcomes: binomial over
    ``examples`` test examples per seed plus the seed spread over the number of seeds; what the
    normal-approximation intervals use when a store kept no outcomes."""
    values = np.asarray(top1, dtype=float)
    p = values.mean() / 100
    binomial = 1e4 * p * (1 - p) / max(examples * values.size, 1)
    seeds = values.var(ddof=1) / values.size if values.size > 1 else 0.0
    return float(binomial + seeds)


class Resampler:
    """Bootstrap resamples of ``n`` paired examples (drawn once, shared by every cell it is
    used for) and of seeds; seeded, so the same table gets the same intervals."""

    def __init__(self, n: int, resamples: int = RESAMPLES, seed: int = 0) -> None:
        if n < 1 or resamples < 1:
            raise ReflowError("the bootstrap needs at least one example and one resample")
        self.n = n
        self.resamples = resamples
        self.rng = np.random.default_rng(seed)
        picks = self.rng.integers(0, n, size=(resamples, n))
        flat = (picks + n * np.arange(resamples)[:, None]).ravel()
        counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
        #: (resamples, n): how often each example is drawn, divided by n (rows sum to 1).
        self.weights = counts.astype(np.float32) / np.float32(n)

    def per_seed(self, values: np.ndarray) -> np.ndarray:
        """(rows, resamples): each row's mean over the resampled examples. One matrix product
        for any number of rows (a table's rows at once cost about what one row costs)."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float32))
        if values.shape[1] != self.n:
            raise ReflowError(f"values cover {values.shape[1]} examples, resampler {self.n}")
        return (values @ self.weights.T).astype(np.float64)

    def mix(self, per_seed: np.ndarray) -> np.ndarray:
        """Bootstrap distribution (resamples,) of the mean over seeds, the seeds (rows of
        ``per_seed``) resampled with replacement."""
        seeds = per_seed.shape[0]
        if seeds == 1:
            return per_seed[0]
        chosen = self.rng.integers(0, seeds, size=(self.resamples, seeds))
        return np.take_along_axis(per_seed.T, chosen, axis=1).mean(axis=1)

    def means(self, values: np.ndarray) -> np.ndarray:
        """Bootstrap distribution (resamples,) of the mean of ``values`` (seeds, n): examples
        resampled with the shared indices, then seeds resampled with replacement."""
        return self.mix(self.per_seed(values))

    def interval(self, values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
        """Percentile interval of the mean of ``values`` (seeds, n)."""
        return percentile_interval(self.means(values), level)


def percentile_interval(distribution: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(distribution, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """Cell A against cell B on the same examples, paired by seed: mean difference of top-1
    (points, A − B) with its interval; exact McNemar on the discordant examples summed over
    seeds; ``p_holm`` once corrected with the other comparisons of its table."""

    difference: float
    low: float
    high: float
    a_only: int  # examples A gets right and B wrong, summed over seeds
    b_only: int
    p_value: float
    seeds: int
    p_holm: float | None = None

    @property
    def direction(self) -> str:
        """``"A"`` / ``"B"`` when the interval excludes zero on that side, else ``"tie"``."""
        if self.low > 0:
            return "A"
        if self.high < 0:
            return "B"
        return "tie"


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test (two-sided binomial on the discordant pairs, p = 1/2), discordant
    counts summed over seeds (rows): (A-only right, B-only right, p-value)."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    if a_only + b_only == 0:
        return a_only, b_only, 1.0
    return a_only, b_only, float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


def compare(
    a_correct: np.ndarray,
    b_correct: np.ndarray,
    resampler: Resampler,
    level: float = LEVEL,
    per_seed: tuple[np.ndarray, np.ndarray] | None = None,
) -> Comparison:
    """Paired comparison of two cells, their per-example correctness as (seeds, n) arrays whose
    rows are the same seeds in the same order; ``per_seed`` passes their rows' resampled means
    when a table computed them already (`Resampler.per_seed`)."""
    a = np.atleast_2d(a_correct).astype(np.float32)
    b = np.atleast_2d(b_correct).astype(np.float32)
    if a.shape != b.shape:
        raise ReflowError(f"cells to compare differ in shape: {a.shape} and {b.shape}")
    difference = a - b
    if per_seed is None:
        per_seed = (resampler.per_seed(a), resampler.per_seed(b))
    low, high = percentile_interval(resampler.mix(per_seed[0] - per_seed[1]), level)
    a_only, b_only, p = mcnemar(a_correct, b_correct)
    return Comparison(
        100 * float(difference.mean()), 100 * low, 100 * high, a_only, b_only, p, a.shape[0]
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()
