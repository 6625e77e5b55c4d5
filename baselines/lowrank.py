"""The damped empirical Fisher F = λI + GᵀG/n, used only through G (n × d), never formed.

Everything CHITA, CBS and M-FAC need reduces to n × n work: with A = nλI + GGᵀ = CCᵀ (Cholesky)
and W = C⁻¹G,

- F⁻¹x = (x − Wᵀ(Wx)) / λ and diag(F⁻¹) = (1 − Σ_r W_r²) / λ (Woodbury);
- the minimiser of ½(β − w)ᵀF(β − w) + cᵀβ with β_P = 0 and c = αGᵀ1/n (a first-order term in
  G's row space) moves the kept weights S by G_Sᵀ(nλI + G_SG_Sᵀ)⁻¹(G_P w_P − α1): the exact OBS
  update of the pruned set P, and CHITA's back-solve;
- M-FAC's recursion v_i = F_{i−1}⁻¹g_i, d_i = n + g_iᵀv_i (F_0 = λI) is the LDLᵀ factorisation
  of A: v_i = C_ii (C⁻¹G)_i / λ and d_i = C_ii² / λ, so one Cholesky and one triangular solve
  (BLAS-3) give exactly the vectors the recursion builds one at a time (tested equal).

Leading batch dimensions are blocks (M-FAC's blocks of B weights). Work is done in float64.
"""

from __future__ import annotations

import torch


def gram_cholesky(grads: torch.Tensor, damp: float) -> torch.Tensor:
    """C with CCᵀ = nλI + GGᵀ, for G of shape (…, n, d)."""
    g = grads.double()
    n = g.shape[-2]
    gram = g @ g.transpose(-1, -2)
    gram.diagonal(dim1=-2, dim2=-1).add_(n * damp)
    return torch.linalg.cholesky(gram)


def whiten(grads: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """W = C⁻¹G, (…, n, d)."""
    return torch.linalg.solve_triangular(chol, grads.double(), upper=False)


def inverse_diagonal(whitened: torch.Tensor, damp: float) -> torch.Tensor:
    """diag(F⁻¹), (…, d)."""
    return (1.0 - whitened.square().sum(-2)) / damp


def inverse_matvec(whitened: torch.Tensor, x: torch.Tensor, damp: float) -> torch.Tensor:
    """F⁻¹x for x of shape (…, d)."""
    x = x.double()
    inner = (whitened @ x.unsqueeze(-1)).squeeze(-1)  # (…, n)
    return (x - (whitened.transpose(-1, -2) @ inner.unsqueeze(-1)).squeeze(-1)) / damp


def quadratic(grads: torch.Tensor, x: torch.Tensor, damp: float) -> torch.Tensor:
    """xᵀFx = λ‖x‖² + ‖Gx‖²/n, for one block."""
    x = x.double()
    gx = grads.double() @ x
    return damp * x.square().sum() + gx.square().sum() / grads.shape[-2]


def constrained_minimiser(
    grads: torch.Tensor,
    weights: torch.Tensor,
    keep: torch.Tensor,
    damp: float,
    linear: float = 0.0,
    solver: str = "woodbury",
) -> torch.Tensor:
    """argmin ½(β − w)ᵀF(β − w) + cᵀβ subject to β_i = 0 where ``keep`` is False, for one block
    (G of shape (n, d)), with c = ``linear``·Gᵀ1/n (CHITA's first-order term; 0 for OBS).

    ``solver="woodbury"`` solves an n × n system, ``"direct"`` the |S| × |S| one (tests, and any
    block with fewer kept weights than gradients).
    """
    g = grads.double()
    w = weights.double()
    n = g.shape[0]
    kept, pruned = keep, ~keep
    z = g[:, pruned] @ w[pruned] - linear  # (n,)
    g_s = g[:, kept]
    if solver == "direct":
        system = g_s.T @ g_s / n
        system.diagonal().add_(damp)
        shift = torch.linalg.solve(system, g_s.T @ z / n)
    elif solver == "woodbury":
        gram = g_s @ g_s.T
        gram.diagonal().add_(n * damp)
        shift = g_s.T @ torch.linalg.solve(gram, z)
    else:
        raise ValueError(f"solver must be woodbury or direct, got {solver!r}")
    beta = torch.zeros_like(w)
    beta[kept] = w[kept] + shift
    return beta


def mfac_recursion(grads: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """M-FAC's static algorithm as written: v_i = F_{i−1}⁻¹g_i, d_i = n + g_iᵀv_i, one gradient at
    a time (O(n²d), n sequential steps). Batched over leading block dims."""
    g = grads.double()
    n = g.shape[-2]
    v = torch.empty_like(g)
    d = torch.empty(g.shape[:-1], dtype=g.dtype, device=g.device)
    for i in range(n):
        gi = g[..., i, :]
        vi = gi / damp
        if i:
            coeff = (v[..., :i, :] @ gi.unsqueeze(-1)).squeeze(-1) / d[..., :i]
            vi = vi - (coeff.unsqueeze(-2) @ v[..., :i, :]).squeeze(-2)
        v[..., i, :] = vi
        d[..., i] = n + (gi * vi).sum(-1)
    return v, d


def mfac_factors(grads: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The recursion's (v, d), computed from one Cholesky factor: v_i = C_ii(C⁻¹G)_i/λ,
    d_i = C_ii²/λ."""
    chol = gram_cholesky(grads, damp)
    pivots = chol.diagonal(dim1=-2, dim2=-1)
    return pivots.unsqueeze(-1) * whiten(grads, chol) / damp, pivots.square() / damp


def mfac_inverse_matvec(
    v: torch.Tensor, d: torch.Tensor, x: torch.Tensor, damp: float
) -> torch.Tensor:
    """F⁻¹x = x/λ − Σ_j (v_jᵀx / d_j) v_j."""
    x = x.double()
    coeff = (v @ x.unsqueeze(-1)).squeeze(-1) / d
    return x / damp - (coeff.unsqueeze(-2) @ v).squeeze(-2)


def mfac_inverse_diagonal(v: torch.Tensor, d: torch.Tensor, damp: float) -> torch.Tensor:
    """diag(F⁻¹) = 1/λ − Σ_j v_j² / d_j."""
    return 1.0 / damp - (v.square() / d.unsqueeze(-1)).sum(-2)
