"""The statistics behind every interval and "better": checked against closed forms, pandas and
scipy, and the bootstrap's coverage on simulated paired outcomes with a known difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, bootstrap

from reflow.stats import Resampler, compare, holm, mcnemar, seed_summary


def test_seed_summary_equals_pandas() -> None:
    values = [71.2, 70.4, 72.9]
    mean, std, n = seed_summary(values)
    assert mean == pytest.approx(pd.Series(values).mean())
    assert std == pytest.approx(pd.Series(values).std())
    assert n == 3
    assert np.isnan(seed_summary([5.0])[1])


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((3, 500)) < 0.8
    b = rng.random((3, 500)) < 0.75
    a_only, b_only, p = mcnemar(a, b)
    assert a_only == int((a & ~b).sum()) and b_only == int((~a & b).sum())
    assert p == binomtest(a_only, a_only + b_only, 0.5).pvalue
    # closed form: all k discordant pairs one way gives p = 2 / 2^k
    a_only, b_only, p = mcnemar(np.ones(7, bool), np.zeros(7, bool))
    assert (a_only, b_only) == (7, 0) and p == pytest.approx(2 / 2**7)
    assert mcnemar(np.ones(4, bool), np.ones(4, bool))[2] == 1.0


def test_holm_matches_its_closed_form() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(.03, 2*.03), max(.06, 1*.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == pytest.approx([0.2])


def _paired(rng: np.random.Generator, n: int, p_a: float, p_b: float, both: float) -> tuple:
    """Paired Bernoulli outcomes: P(A right) = p_a, P(B right) = p_b, P(both right) = both."""
    u = rng.random(n)
    a_only, b_only = p_a - both, p_b - both
    a = u < both + a_only
    b = (u < both) | ((u >= both + a_only) & (u < both + a_only + b_only))
    return a, b


def test_single_seed_interval_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(1)
    a, b = _paired(rng, 3000, 0.80, 0.77, 0.72)
    ours = compare(a, b, Resampler(3000, resamples=4000, seed=2))
    theirs = bootstrap(
        (a.astype(float) - b.astype(float),),
        np.mean,
        n_resamples=4000,
        method="percentile",
        random_state=3,
        vectorized=True,
    ).confidence_interval
    assert ours.low == pytest.approx(100 * theirs.low, abs=0.25)
    assert ours.high == pytest.approx(100 * theirs.high, abs=0.25)


def test_paired_interval_coverage_on_simulated_outcomes() -> None:
    """≥ 1,000 seeded simulations with true difference 3 points: the 95% interval covers it
    93–97% of the time."""
    rng = np.random.default_rng(7)
    n, simulations, covered = 400, 1000, 0
    for i in range(simulations):
        a, b = _paired(rng, n, 0.80, 0.77, 0.70)
        result = compare(a, b, Resampler(n, resamples=1000, seed=i))
        covered += result.low <= 3.0 <= result.high
    assert 0.93 <= covered / simulations <= 0.97, covered


def test_intervals_shrink_as_examples_grow() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (250, 1000, 4000):
        a, b = _paired(rng, n, 0.8, 0.77, 0.7)
        c = compare(a, b, Resampler(n, seed=0))
        widths.append(c.high - c.low)
    assert widths[0] > widths[1] > widths[2]


def test_seed_spread_widens_the_two_level_interval() -> None:
    """Three seeds whose accuracies differ by several points: the interval that resamples seeds
    is wider than the one that treats the seeds' examples as one pool."""
    rng = np.random.default_rng(4)
    n = 2000
    seeds = np.stack([rng.random(n) < p for p in (0.70, 0.78, 0.86)]).astype(float)
    resampler = Resampler(n, seed=0)
    low, high = resampler.interval(seeds)
    pooled = Resampler(3 * n, seed=0).interval(seeds.reshape(1, -1))
    assert high - low > 2 * (pooled[1] - pooled[0])
    assert low < seeds.mean() < high


def test_comparison_direction() -> None:
    a = np.ones((2, 300), bool)
    b = np.zeros((2, 300), bool)
    b[:, :30] = True
    result = compare(a, b, Resampler(300))
    assert result.direction == "A" and result.difference == pytest.approx(90.0)
    assert compare(b, a, Resampler(300)).direction == "B"
    assert compare(a, a, Resampler(300)).direction == "tie"


def _sweep(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for column, values in scores.items():
        method, _, repair = column.partition("+")
        for i, top1 in enumerate(values):
            rows.append(
                {
                    "model": "m",
                    "checkpoint": "c",
                    "dataset": "d",
                    "sparsity": 0.1 * (i + 1),
                    "method": method,
                    "repair": repair or "none",
                    "seed": 0,
                    "top1": top1,
                }
            )
    return pd.DataFrame(rows)


def test_friedman_ranking_matches_scipy_and_orders_the_methods() -> None:
    from scipy.stats import friedmanchisquare

    from reflow.ranking import rank_methods

    scores = {
        "mp": [80, 70, 60, 50, 40, 30],
        "mp+reflow": [85, 82, 78, 74, 70, 60],
        "wf_u": [84, 75, 65, 52, 38, 31],
        "cbs_u": [83, 76, 61, 49, 41, 29],
    }
    ranking = rank_methods(_sweep(scores))
    assert ranking.ranks.index[0] == "mp+reflow" and ranking.ranks.iloc[0] == 1.0
    expected = friedmanchisquare(*(scores[c] for c in ranking.scores.columns))
    assert ranking.friedman_statistic == pytest.approx(expected.statistic)
    assert ranking.friedman_p == pytest.approx(expected.pvalue)
    if ranking.nemenyi is not None:  # the stats extra
        assert ranking.nemenyi.shape == (4, 4)


def test_ranking_needs_complete_blocks() -> None:
    from reflow.errors import ReflowError
    from reflow.ranking import rank_methods

    with pytest.raises(ReflowError, match="at least 3 columns"):
        rank_methods(_sweep({"mp": [1, 2], "wf_u": [2, 3]}))


def test_critical_difference_diagram_is_drawn(tmp_path) -> None:
    pytest.importorskip("scikit_posthocs")
    from reflow.plots import critical_difference

    frame = _sweep({"mp": [80, 70, 60], "mp+reflow": [85, 82, 78], "wf_u": [84, 75, 65]})
    frame["dense_top1"] = 90.0
    paths = critical_difference(pd.DataFrame(), frame, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.is_file() for p in paths)
