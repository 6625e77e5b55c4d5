"""Batched solves of symmetric positive-definite systems, by Cholesky.

Why not ``torch.linalg.solve``: on the CPU its batched LU runs MKL's ``getrf`` on several batch
members at once, and once anything has called ``torch.set_num_threads(n > 1)`` (``--threads``,
a Dask worker, a user's script) MKL's row swaps race: wrong pivots and "Pivots given to lu_solve
must all be greater or equal to 1" (pytorch/pytorch#142815). Every batched system the OBS-family
methods solve is SPD (a principal block of a damped Hessian or Fisher inverse, padded with I), so
Cholesky, which has no pivots and half LU's flops, is the factorisation to use anyway.
"""

from __future__ import annotations

import torch


def spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with a x = b for a batch of SPD ``a`` (..., d, d); ``b`` is (..., d) or (..., d, k).

    A member that is not numerically positive definite (Cholesky fails) is solved alone by LU,
    which one matrix at a time does not race, so a borderline system still gets its answer.
    """
    vector = b.dim() == a.dim() - 1
    rhs = b.unsqueeze(-1) if vector else b
    chol, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(rhs, chol)
    failed = (info.reshape(-1) != 0).nonzero().flatten().tolist()
    if failed:
        flat_a, flat_rhs, flat_x = (t.reshape(-1, *t.shape[-2:]) for t in (a, rhs, x))
        for i in failed:
            flat_x[i] = torch.linalg.solve(flat_a[i], flat_rhs[i])
        x = flat_x.reshape(x.shape)
    return x.squeeze(-1) if vector else x


def support_solve(matrix: torch.Tensor, support: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """x with x_S = M_SS⁻¹ rhs_S on each member's support S and 0 elsewhere, for a batch whose
    supports differ in size: one SPD solve of (M∘ssᵀ + diag(1 − s)) x = rhs∘s, M_SS ⊕ I in
    disguise. ``matrix`` (..., d, d) SPD, ``support`` (..., d) bool, ``rhs`` (..., d)."""
    s = support.to(matrix.dtype)
    system = matrix * s.unsqueeze(-1) * s.unsqueeze(-2) + torch.diag_embed(1 - s)
    return spd_solve(system, rhs * s)
