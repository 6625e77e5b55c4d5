"""ALPS (Meng et al., NeurIPS 2024, "ALPS: Improved Optimization for Highly Sparse One-Shot
Pruning"): the layer-wise reconstruction problem min ½ tr((B − B₀)ᵀ H (B − B₀)) subject to a
cardinality constraint, solved by ADMM with an adaptive penalty, then refined on the support.

As the reference's ``ALPS_admm`` (mazumder-lab/ALPS, ``alps.py``):

- H = XXᵀ damped by 1% of its mean diagonal, then normalised to unit diagonal (B = W·√diag H);
- ADMM on B = D: B ← (H + ρI)⁻¹(H B₀ − V + ρD); D ← the top-k (by D²) of B + V/ρ over the whole
  layer (or N of every M consecutive inputs per row); V ← V + ρ(B − D); ρ starts at 0.1;
- every 3 iterations the support change s (entries whose zero pattern flipped) sets ρ: × 1.3 when
  s/k > 0.1, × 1.2 when > 0.005, × 1.1 when any changed after ρ first grew; before that, a change
  divides ρ by 5 and restarts from the dense weights, and no change divides it by 5; once ρ has
  grown, a stable support ends the loop, as does s/k < 0.0003 after iteration 30; ρ ≤ 10⁶,
  at most 300 iterations; (H + ρI)⁻¹ from one eigendecomposition;
- the final top-k of B, then 10 conjugate-gradient steps (relative tolerance 1e-4) on the normal
  equations restricted to the support, starting from B.

Grouped and depthwise convs run their groups as a batch with their own H; the top-k is taken over
the whole layer, as the reference takes it over the whole weight. ``alps_s`` keeps ALPS's mask on
the original weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from reflow.baselines.base import option
from reflow.baselines.layerwise import LayerwiseConfig, LayerwiseMethod
from reflow.baselines.registry import register

from reflow.masks import Pattern


@dataclass(frozen=True)
class ALPSConfig(LayerwiseConfig):
    rho: float = option(0.1, "initial ADMM penalty (the reference's 0.1)", minimum=1e-12)
    max_iter: int = option(300, "ADMM iterations at most", minimum=1)
    update_iter: int = option(3, "iterations between penalty updates", minimum=1)
    switch_iter: int = option(30, "iteration after which a stable support ends ADMM", minimum=0)
    cg_iter: int = option(10, "conjugate-gradient steps on the support", minimum=0)


def _project(values: torch.Tensor, keep: int, pattern: Pattern | None) -> torch.Tensor:
    """Keep mask (G, d, R): the ``keep`` largest values² over the layer, or N of every M
    consecutive inputs per output row."""
    if pattern is not None:
        g, d, r = values.shape
        grouped = values.transpose(1, 2).reshape(g, r, d // pattern.m, pattern.m).square()
        top = grouped.topk(pattern.n, dim=-1).indices
        mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, top, True)
        return mask.reshape(g, r, d).transpose(1, 2)
    flat = values.square().reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep:
        mask[flat.topk(keep).indices] = True
    return mask.view_as(values)


def _inverse(eigenvalues: torch.Tensor, vectors: torch.Tensor, rho: float) -> torch.Tensor:
    return vectors @ ((1.0 / (eigenvalues + rho)).unsqueeze(-1) * vectors.transpose(-1, -2))


def conjugate_gradient_on_support(
    hessian: torch.Tensor,
    rhs: torch.Tensor,
    support: torch.Tensor,
    start: torch.Tensor,
    iterations: int,
    rtol: float = 1e-4,
) -> torch.Tensor:
    """CG for H X = RHS with X zero off ``support`` (residuals masked to it), per column, as the
    reference's ``cg_batch`` without preconditioner."""
    mask = support.to(start.dtype)
    x = start * mask
    residual = (rhs - hessian @ x) * mask
    direction = residual.clone()
    rz = (residual * residual).sum(dim=1, keepdim=True)
    stop = rtol * rhs.norm(dim=2)  # the reference's per-row norms, as its stopping rule
    for _ in range(iterations):
        hp = hessian @ direction
        denominator = (direction * hp).sum(dim=1, keepdim=True)
        alpha = rz / torch.where(denominator == 0, torch.full_like(denominator, 1e-8), denominator)
        x = x + alpha * direction
        residual = (residual - alpha * hp) * mask
        rz_new = (residual * residual).sum(dim=1, keepdim=True)
        if bool(((hessian @ x - rhs).norm(dim=2) <= stop).all()):
            break
        beta = rz_new / torch.where(rz == 0, torch.full_like(rz, 1e-8), rz)
        direction = residual + beta * direction
        rz = rz_new
    return x


def alps_rows(
    hessian: torch.Tensor,
    rows: torch.Tensor,
    prune_count: int,
    cfg: ALPSConfig,
    pattern: Pattern | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """ALPS on rows (G, R, d) with H (G, d, d): (new rows, keep mask, facts)."""
    h = hessian.double().clone()
    diag = h.diagonal(dim1=-2, dim2=-1)
    diag += 0.01 * diag.mean(-1, keepdim=True)
    norm = diag.sqrt() + 1e-8  # (G, d)
    h = h / norm.unsqueeze(-1) / norm.unsqueeze(-2)
    b0 = (rows.double() * norm.unsqueeze(1)).transpose(1, 2)  # (G, d, R)
    target = h @ b0  # the reference's YtXᵀ
    keep = rows.numel() - prune_count
    eigenvalues, vectors = torch.linalg.eigh(h)
    rho = cfg.rho
    inverse = _inverse(eigenvalues, vectors, rho)
    b, v = b0.clone(), torch.zeros_like(b0)
    d = b0 * _project(b0, keep, pattern)
    d_start = d.clone()
    previous = d == 0
    grown = False
    iterations = 0
    for i in range(cfg.max_iter):
        iterations = i + 1
        b = inverse @ (target - v + rho * d)
        candidate = b + v / rho
        d = candidate * _project(candidate, keep, pattern)
        v = v + rho * (b - d)
        if (i + 1) % cfg.update_iter:
            continue
        support = d == 0
        change = int((support != previous).sum())
        if change / max(keep, 1) > 0.1:
            grown, rho = True, rho * 1.3
        elif change / max(keep, 1) > 0.005:
            grown, rho = True, rho * 1.2
        elif change > 0:
            if grown:
                rho *= 1.1
            else:
                rho /= 5
                b, d, v = b0.clone(), d_start.clone(), torch.zeros_like(b0)
        elif grown:
            break
        else:
            rho /= 5
        previous = support
        rho = min(rho, 1e6)
        inverse = _inverse(eigenvalues, vectors, rho)
        if i >= cfg.switch_iter and change / max(keep, 1) < 0.0003:
            break
    mask = _project(b, keep, pattern)
    b = conjugate_gradient_on_support(h, target, mask, b * mask, cfg.cg_iter)
    new = (b.transpose(1, 2) / norm.unsqueeze(1)).to(rows.dtype)
    facts = {"alps_iterations": float(iterations), "alps_final_rho": rho}
    return new * mask.transpose(1, 2), mask.transpose(1, 2), facts


class _ALPS(LayerwiseMethod):
    selection_family = "alps"
    Config = ALPSConfig

    def solve_layer(
        self,
        hessian: torch.Tensor,
        rows: torch.Tensor,
        prune_count: int,
        pattern: Pattern | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        return alps_rows(hessian, rows, prune_count, self.config, pattern)


@register
class ALPS(_ALPS):
    name = "alps"
    summary = "ALPS (Meng et al. 2024): ADMM on the layer reconstruction, adaptive ρ, CG on support"
    updates_weights = True


@register
class ALPSSelection(_ALPS):
    name = "alps_s"
    summary = "ALPS's mask on the original weights (its selection without the update)"
