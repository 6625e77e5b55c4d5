"""CHITA, CBS and M-FAC against closed forms and brute force on tiny problems (float64), where the
Fisher F = λI + GᵀG/n is written down."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from reflow.baselines.cbs import CbsConfig, SwapSearch, obs_update_through_g
from reflow.baselines.chita import ActiveSet, ActiveSetIHT, ChitaConfig, Problem, stage_sparsities
from reflow.baselines.fisher import obs_update_exact, obs_update_woodfisher
from reflow.baselines.gradients import GradientMatrix
from reflow.baselines.lowrank import (
    constrained_minimiser,
    gram_cholesky,
    inverse_diagonal,
    inverse_matvec,
    mfac_factors,
    mfac_inverse_diagonal,
    mfac_inverse_matvec,
    mfac_recursion,
    whiten,
)
from reflow.baselines.mfac import step_sparsities

DAMP = 1e-3


def _fisher(g: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    n, d = g.shape
    return damp * torch.eye(d, dtype=g.dtype) + g.T @ g / n


def _grads(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double()


def _matrix(g: torch.Tensor) -> GradientMatrix:
    """A one-layer gradient matrix around G (n, d)."""
    d = g.shape[1]
    return GradientMatrix(("w",), (torch.Size([d]),), (0, d), g.T.contiguous())


# -- the low-rank Fisher and M-FAC --------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(5, 12), (12, 5), (7, 7)])
def test_woodbury_inverse_products_and_diagonal(n: int, d: int) -> None:
    g = _grads(n, d, 0)
    inverse = torch.linalg.inv(_fisher(g))
    w = whiten(g, gram_cholesky(g, DAMP))
    x = torch.randn(d, dtype=torch.float64)
    torch.testing.assert_close(inverse_matvec(w, x, DAMP), inverse @ x)
    torch.testing.assert_close(inverse_diagonal(w, DAMP), inverse.diagonal())


@pytest.mark.parametrize(("m", "d"), [(6, 10), (10, 4)])
def test_mfac_recursion_products_and_diagonal_equal_a_direct_inverse(m: int, d: int) -> None:
    g = torch.stack([_grads(m, d, 1), _grads(m, d, 2)])  # two blocks, batched
    v, dd = mfac_recursion(g, DAMP)
    x = torch.randn(2, d, dtype=torch.float64)
    for b in range(2):
        inverse = torch.linalg.inv(_fisher(g[b]))
        torch.testing.assert_close(mfac_inverse_matvec(v[b], dd[b], x[b], DAMP), inverse @ x[b])
        torch.testing.assert_close(mfac_inverse_diagonal(v[b], dd[b], DAMP), inverse.diagonal())
    # the recursion's vectors, one gradient at a time: v_i = F_{i-1}^-1 g_i, d_i = m + g_i.v_i
    partial = DAMP * torch.eye(d, dtype=torch.float64)
    for i in range(m):
        gi = g[0, i]
        torch.testing.assert_close(v[0, i], torch.linalg.solve(partial, gi))
        torch.testing.assert_close(dd[0, i], m + gi @ v[0, i])
        partial = partial + torch.outer(gi, gi) / m


def test_mfac_cholesky_form_equals_the_recursion() -> None:
    g = torch.stack([_grads(8, 20, 3), _grads(8, 20, 4, scale=10.0)])
    v_rec, d_rec = mfac_recursion(g, DAMP)
    v_fast, d_fast = mfac_factors(g, DAMP)
    torch.testing.assert_close(v_fast, v_rec, rtol=1e-7, atol=1e-6)
    torch.testing.assert_close(d_fast, d_rec, rtol=1e-9, atol=1e-9)


def test_mfac_update_is_the_joint_obs_update_only_when_f_is_diagonal() -> None:
    n, d = 12, 6
    w = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    pruned = torch.tensor([True, False, True, False, False, True])
    q, _ = torch.linalg.qr(_grads(n, d, 6))  # orthonormal columns: GᵀG is diagonal
    diagonal_g = q * torch.tensor([3.0, 1.0, 2.0, 0.5, 4.0, 1.5], dtype=torch.float64)
    for g, equal in ((diagonal_g, True), (_grads(n, d, 7), False)):
        v, dd = mfac_factors(g.unsqueeze(0), DAMP)
        diag = mfac_inverse_diagonal(v, dd, DAMP)[0]
        coeff = torch.where(pruned, w / diag, 0.0)
        mfac = -mfac_inverse_matvec(v[0], dd[0], coeff, DAMP)
        inverse = torch.linalg.inv(_fisher(g)).unsqueeze(0)
        joint = obs_update_exact(w.unsqueeze(0), inverse, pruned.unsqueeze(0))[0]
        summed = obs_update_woodfisher(w.unsqueeze(0), inverse, pruned.unsqueeze(0))[0]
        torch.testing.assert_close(mfac, summed)  # M-FAC's update: the sum of single OBS updates
        assert torch.allclose(mfac, joint) == equal


def test_mfac_schedule_is_geometric_in_density() -> None:
    levels = step_sparsities(0.9, 4)
    densities = [1.0] + [1 - s for s in levels]
    ratios = [b / a for a, b in itertools.pairwise(densities)]
    assert levels[-1] == pytest.approx(0.9)
    assert all(r == pytest.approx(0.1**0.25) for r in ratios)


# -- the constrained minimiser (OBS update, CHITA's back-solve) ---------------------------------


def _closed_form(
    g: torch.Tensor, w: torch.Tensor, keep: torch.Tensor, linear: float
) -> torch.Tensor:
    """argmin ½(β−w)ᵀF(β−w) + cᵀβ with β_P = 0 from the KKT system of the dense F."""
    f = _fisher(g)
    c = linear * g.sum(0) / g.shape[0]
    s = keep.nonzero().squeeze(1)
    beta = torch.zeros_like(w)
    rhs = f[s] @ w - c[s]
    beta[s] = torch.linalg.solve(f[s][:, s], rhs)
    return beta


@pytest.mark.parametrize(("n", "linear"), [(6, 0.0), (6, 0.5), (30, 0.0), (30, 1.0)])
def test_backsolve_direct_and_woodbury_equal_the_closed_form(n: int, linear: float) -> None:
    d = 10
    g, w = _grads(n, d, 8), torch.randn(d, dtype=torch.float64)
    keep = torch.tensor([True, False] * 5)
    expected = _closed_form(g, w, keep, linear)
    for solver in ("direct", "woodbury"):
        got = constrained_minimiser(g, w, keep, DAMP, linear, solver)
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_obs_update_through_g_equals_the_exact_multi_weight_update() -> None:
    g = _grads(15, 9, 9)
    w = torch.randn(9, dtype=torch.float64)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    inverse = torch.linalg.inv(_fisher(g)).unsqueeze(0)
    delta = obs_update_exact(w.unsqueeze(0), inverse, ~keep.unsqueeze(0))[0]
    got = obs_update_through_g(_matrix(g), w, keep, DAMP, 1.0)
    torch.testing.assert_close(got, torch.where(keep, w + delta, 0.0))


# -- CHITA ---------------------------------------------------------------------------------------


def _q(g: torch.Tensor, w: torch.Tensor, beta: torch.Tensor, linear: float = 0.0) -> float:
    d = beta - w
    c = linear * g.sum(0) / g.shape[0]
    return float(0.5 * d @ _fisher(g) @ d + c @ beta)


def _chita_problem(n: int, p: int, seed: int, spread: float | None):
    """``spread`` None: correlated gradient columns; else orthogonal columns with norms in
    [1, 1 + spread]·√n, so F is diagonal with condition number ≤ (1 + spread)²."""
    gen = torch.Generator().manual_seed(seed)
    if spread is None:
        g = torch.randn(n, 3, generator=gen).double() @ torch.randn(3, p, generator=gen).double()
        g = g + 0.3 * torch.randn(n, p, generator=gen).double()
    else:
        q, _ = torch.linalg.qr(torch.randn(n, p, generator=gen).double())
        g = q * (1.0 + spread * torch.rand(p, generator=gen).double()) * math.sqrt(n)
    w = torch.randn(p, generator=gen).double()
    return g, w


def _chita_objective(g, w, k: int) -> tuple[float, torch.Tensor]:
    problem = Problem(g.T.contiguous(), w, DAMP, 0.0)
    beta, _ = ActiveSetIHT(problem, k, ChitaConfig(damp=DAMP)).solve()
    support = beta != 0
    solved = constrained_minimiser(g, w, support, DAMP)
    everything = ActiveSet(problem)
    value = everything.value(solved, everything.residual(solved))
    assert value == pytest.approx(_q(g, w, solved), rel=1e-9, abs=1e-12)
    return value, support


def _exhaustive(g, w, k: int) -> float:
    p = w.numel()
    best = math.inf
    for support in itertools.combinations(range(p), k):
        keep = torch.zeros(p, dtype=torch.bool)
        keep[list(support)] = True
        best = min(best, _q(g, w, constrained_minimiser(g, w, keep, DAMP)))
    return best


def test_chita_is_never_below_the_exhaustive_minimum_and_finds_it_when_well_conditioned() -> None:
    """p = 12, k = 5 (792 supports), the back-solved objective of CHITA's support against the
    exhaustive minimum. It is never below it (the back-solve is exact on its support). How often
    it *equals* it, measured: 39 of 40 instances when F is diagonal with condition number ≤ 1.1
    (asserted below); 35 of 40 at ≤ 1.44 and 22 of 40 at ≤ 4 (IHT compares thresholded steps,
    not the loss of each support, even on a separable problem); 16 of 40 with correlated
    gradient columns (n = 40) and 3 of 40 when G has rank 8 < p."""
    found = 0
    for seed in range(40):
        g, w = _chita_problem(40, 12, seed, spread=0.05)
        value, support = _chita_objective(g, w, 5)
        best = _exhaustive(g, w, 5)
        assert value >= best - 1e-10 and int(support.sum()) == 5
        found += value <= best + 1e-10 * max(1.0, abs(best))
    assert found >= 39
    for seed in range(10):
        g, w = _chita_problem(8, 12, 200 + seed, spread=None)
        value, _ = _chita_objective(g, w, 6)
        assert value >= _exhaustive(g, w, 6) - 1e-10


def test_chita_schedules_end_at_the_target() -> None:
    for schedule in ("poly", "exp", "linear", "const", "mfac"):
        levels = stage_sparsities(4, 0.1, 0.8, schedule)
        assert len(levels) == 4 and levels[-1] == pytest.approx(0.8)
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(levels))
    assert stage_sparsities(1, 0.1, 0.8, "poly") == [0.8]


# -- CBS ----------------------------------------------------------------------------------------


def _cbs_problem(n: int, sizes: list[int], seed: int):
    gen = torch.Generator().manual_seed(seed)
    p = sum(sizes)
    g = torch.randn(n, p, generator=gen).double()
    offsets = list(itertools.accumulate([0, *sizes]))
    gm = GradientMatrix(
        tuple(f"l{i}" for i in range(len(sizes))),
        tuple(torch.Size([s]) for s in sizes),
        tuple(offsets),
        g.T.contiguous(),
    )
    w = torch.randn(p, generator=gen).double()
    blocks = torch.zeros(p, p, dtype=torch.float64)
    for a, b in itertools.pairwise(offsets):
        blocks[a:b, a:b] = _fisher(g[:, a:b], 1e-5)
    return gm, w, blocks


def _zeroing_loss(w: torch.Tensor, f: torch.Tensor, pruned: torch.Tensor) -> float:
    wp = torch.where(pruned, w, 0.0)
    return float(wp @ f @ wp)


def test_cbs_swap_change_equals_the_brute_force_difference() -> None:
    gm, w, f = _cbs_problem(7, [5, 4, 3], 0)
    pruned = torch.zeros(12, dtype=torch.bool)
    pruned[[0, 2, 5, 6, 9, 11]] = True
    search = SwapSearch(gm, w, pruned, CbsConfig(damp=1e-5))
    assert search.objective() == pytest.approx(_zeroing_loss(w, f, pruned), rel=1e-10)
    for i in pruned.nonzero().squeeze(1):
        for j in (~pruned).nonzero().squeeze(1):
            gamma = search._gamma(i, j.unsqueeze(0))[0]
            predicted = float(search.beta[j] - search.alpha[i] - gamma)
            after = pruned.clone()
            after[i], after[j] = False, True
            actual = _zeroing_loss(w, f, after) - _zeroing_loss(w, f, pruned)
            assert predicted == pytest.approx(actual, rel=1e-9, abs=1e-12)


def test_cbs_objective_never_increases_and_sum_of_swaps_is_exact() -> None:
    for seed in range(10):
        gm, w, _f = _cbs_problem(10, [8, 6, 6], seed)
        pruned = torch.zeros(20, dtype=torch.bool)
        pruned[torch.randperm(20, generator=torch.Generator().manual_seed(seed))[:10]] = True
        search = SwapSearch(gm, w, pruned, CbsConfig(damp=1e-5, epsilon=1e-9, window=3))
        previous = search.objective()
        for _ in range(20):
            before = search.pruned.clone()
            stop, _, predicted = search.iteration()
            if stop:
                break
            now = search.objective()
            assert now <= previous + 1e-12
            assert previous - now == pytest.approx(predicted, rel=1e-8, abs=1e-12)
            assert int(search.pruned.sum()) == int(before.sum())  # the count never moves
            previous = now


def test_cbs_against_the_exhaustive_minimum() -> None:
    """p = 14, 7 pruned (3,432 pruned sets), two layer blocks: CBS from a magnitude mask is never
    below the exhaustive minimum, never above its start, and reaches the minimum on 31 of 40
    instances (measured; from a random mask: 34 of 40)."""
    reached = 0
    for seed in range(40):
        gm, w, f = _cbs_problem(9, [6, 8], 50 + seed)
        start = torch.zeros(14, dtype=torch.bool)
        start[torch.argsort(w.abs())[:7]] = True
        search = SwapSearch(gm, w, start, CbsConfig(damp=1e-5, epsilon=1e-12, window=7))
        result = search.run()
        best = min(
            _zeroing_loss(w, f, torch.isin(torch.arange(14), torch.tensor(s)))
            for s in itertools.combinations(range(14), 7)
        )
        assert result["objective"] >= best - 1e-12
        assert result["objective"] <= result["objective_initial"] + 1e-12
        reached += result["objective"] <= best * (1 + 1e-9) + 1e-15
    assert reached >= 31
