"""The Combinatorial Brain Surgeon (Yu et al., ICML 2022): choose the pruned set P to minimise the
loss of zeroing it without an update, f(P) = w_Pᵀ F_PP w_P, by swap local search from an initial
mask; CBS-U then moves the surviving weights by the exact multi-weight OBS update.

F is block diagonal by layer, F_ℓ = λI + G_ℓᵀG_ℓ/N over N per-sample gradients, and is used only
through G (a whole ResNet-20 layer block would have 36,864² entries). With u_ℓ = G_ℓ,P w_ℓ,P,

    α_i = 2w_i(F_{i,P}w_P) − w_i²F_ii  (i ∈ P: what un-pruning i saves)
    β_j = 2w_j(F_{j,P}w_P) + w_j²F_jj  (j kept: what pruning j costs)
    γ_ij = 2w_iF_ijw_j                  (zero across layers)

and swapping i out of P for j changes f by exactly β_j − α_i − γ_ij. Each iteration (the
reference's prune_one_iter) sorts P by α descending and the kept weights by β_j − γ_{j,P₀}
ascending, checks the pair (0, 0) (stop when it does not lower f by ε), then walks down P: for
position i it tries kept positions within ρ of i and takes the first swap that lowers f by at least
ε, given the swaps already taken; after more than τ positions without a swap it stops. Swaps move
weights between layers (the global count is fixed). At most 100 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.gradients import (
    GradientConfig,
    GradientMatrix,
    GradientMatrixMemory,
    gradient_matrix,
)
from reflow.baselines.lowrank import constrained_minimiser, gram_cholesky, inverse_diagonal, whiten
from reflow.baselines.registry import register
from torch import nn

from reflow.masks import count_to_prune, lowest_k

INITS = ("woodfisher", "magnitude")


@dataclass(frozen=True)
class CbsConfig(GradientConfig):
    init: str = option(
        "woodfisher", "initial mask: woodfisher (ResNet-20 in the paper), magnitude", choices=INITS
    )
    epsilon: float = option(1e-4, "ε: least objective decrease for a swap to be taken")
    window: int = option(
        10, "ρ: kept candidates tried on each side of a pruned weight's rank", minimum=1
    )
    max_failures: int = option(20, "τ: positions without a swap before an iteration ends")
    iterations: int = option(100, "most swap iterations", minimum=1)
    update_scale: float = option(1.0, "scale of the exact OBS update (cbs_u)")

    def __post_init__(self) -> None:
        super().__post_init__()


def woodfisher_scores(gm: GradientMatrix, weights: torch.Tensor, damp: float) -> torch.Tensor:
    """OBS statistic w²/(2[F_ℓ⁻¹]_qq) with whole-layer blocks, through G (CBS's WoodFisher
    initial mask: the reference's woodfisherblock pruner without gradient splitting)."""
    scores = torch.empty_like(weights, dtype=torch.float64)
    for i in range(len(gm.names)):
        cols = gm.layer(i)
        g = gm.transposed[cols].T
        diag = inverse_diagonal(whiten(g, gram_cholesky(g, damp)), damp)
        scores[cols] = weights[cols].double().square() / (2 * diag)
    return scores


class SwapSearch:
    """CBS's local search over the pruned set, on G stored transposed (a weight's column is a
    contiguous row of ``gt``)."""

    def __init__(
        self, gm: GradientMatrix, weights: torch.Tensor, pruned: torch.Tensor, config: CbsConfig
    ) -> None:
        self.gt = gm.transposed.double()
        self.n = self.gt.shape[1]
        self.w = weights.double()
        self.damp, self.config = config.damp, config
        self.slices = [gm.layer(i) for i in range(len(gm.names))]
        self.layer = torch.empty(weights.numel(), dtype=torch.long, device=weights.device)
        for i, cols in enumerate(self.slices):
            self.layer[cols] = i
        self.diag = self.gt.square().sum(1) / self.n + self.damp  # F_ii
        self.pruned = pruned.clone()
        self._refresh()

    def _refresh(self) -> None:
        """u_ℓ, F_{·,P}w_P, α and β for the current P (O(Np))."""
        wp = torch.where(self.pruned, self.w, 0)
        self.u = torch.stack([self.gt[cols].T @ wp[cols] for cols in self.slices])
        fw = torch.cat([self.gt[cols] @ self.u[i] for i, cols in enumerate(self.slices)])
        fw = fw / self.n + self.damp * wp  # F_{i,P}w_P
        self.alpha = 2 * self.w * fw - self.w.square() * self.diag
        self.beta = 2 * self.w * fw + self.w.square() * self.diag

    def objective(self) -> float:
        """f(P) = w_PᵀF_PPw_P = Σ_ℓ ‖u_ℓ‖²/N + λ‖w_P‖²."""
        wp = torch.where(self.pruned, self.w, 0)
        return float(self.u.square().sum() / self.n + self.damp * wp.square().sum())

    def iteration(self) -> tuple[bool, int, float]:
        """One pass of swaps; returns (stop, swaps taken, summed predicted decrease)."""
        cfg = self.config
        pruned_idx = self.pruned.nonzero().squeeze(1)
        kept_idx = (~self.pruned).nonzero().squeeze(1)
        p_order = pruned_idx[torch.argsort(self.alpha[pruned_idx], descending=True)]
        first = p_order[0]
        gamma_first = self._gamma(first, kept_idx)
        k_order = kept_idx[torch.argsort(self.beta[kept_idx] - gamma_first)]
        delta_u = torch.zeros_like(self.u)
        used = torch.zeros(k_order.numel(), dtype=torch.bool, device=self.w.device)
        swaps: list[tuple[int, int]] = []
        total = 0.0

        def change(pos_i: int, candidates: torch.Tensor) -> torch.Tensor:
            """f change of swapping P[pos_i] with each kept candidate, given this pass's swaps."""
            i = p_order[pos_i]
            li = self.layer[i]
            alpha_i = self.alpha[i] + 2 * self.w[i] * (self.gt[i] @ delta_u[li]) / self.n
            js = k_order[candidates]
            lj = self.layer[js]
            beta_j = self.beta[js] + 2 * self.w[js] * (self.gt[js] * delta_u[lj]).sum(1) / self.n
            gamma = self._gamma(i, js)
            return beta_j - gamma - alpha_i

        first_change = float(change(0, torch.tensor([0], device=self.w.device))[0])
        if -first_change < cfg.epsilon:
            return True, 0, 0.0
        self._take(p_order[0], k_order[0], delta_u)
        used[0] = True
        swaps.append((int(p_order[0]), int(k_order[0])))
        total -= first_change
        failures = 0
        for pos in range(1, p_order.numel()):
            if failures > cfg.max_failures:
                break
            window = torch.arange(
                max(1, pos - cfg.window),
                min(k_order.numel(), pos + cfg.window),
                device=self.w.device,
            )
            window = window[~used[window]]
            if window.numel() == 0:
                failures += 1
                continue
            changes = change(pos, window)
            good = (-changes >= cfg.epsilon).nonzero()
            if good.numel() == 0:
                failures += 1
                continue
            pick = int(good[0, 0])
            j_pos = int(window[pick])
            self._take(p_order[pos], k_order[j_pos], delta_u)
            used[j_pos] = True
            swaps.append((int(p_order[pos]), int(k_order[j_pos])))
            total -= float(changes[pick])
        for i, j in swaps:
            self.pruned[i], self.pruned[j] = False, True
        self._refresh()
        return False, len(swaps), total

    def _gamma(self, i: torch.Tensor, js: torch.Tensor) -> torch.Tensor:
        """γ_ij = 2 w_i F_ij w_j for one i and many j (0 across layers; i ≠ j)."""
        same = self.layer[js] == self.layer[i]
        fij = (self.gt[js] @ self.gt[i]) / self.n
        return torch.where(same, 2 * self.w[i] * fij * self.w[js], 0.0)

    def _take(self, i: torch.Tensor, j: torch.Tensor, delta_u: torch.Tensor) -> None:
        """Record the swap (i leaves P, j joins) in this pass's running Δu."""
        delta_u[self.layer[i]] -= self.w[i] * self.gt[i]
        delta_u[self.layer[j]] += self.w[j] * self.gt[j]

    def run(self) -> dict[str, float]:
        start = self.objective()
        history = [start]
        swaps = iterations = 0
        for _ in range(self.config.iterations):
            stop, taken, _ = self.iteration()
            if stop:
                break
            iterations += 1
            swaps += taken
            history.append(self.objective())
        return {
            "objective_initial": start,
            "objective": history[-1],
            "swap_iterations": iterations,
            "swaps": swaps,
            "objective_increased": float(any(b > a + 1e-12 * abs(a) for a, b in pairwise(history))),
        }


def obs_update_through_g(
    gm: GradientMatrix, weights: torch.Tensor, keep: torch.Tensor, damp: float, scale: float
) -> torch.Tensor:
    """New weights after the exact multi-weight OBS update of each layer's pruned set (scaled),
    with whole-layer Fisher blocks, through G."""
    out = torch.zeros_like(weights)
    for i in range(len(gm.names)):
        cols = gm.layer(i)
        w = weights[cols].double()
        solved = constrained_minimiser(gm.transposed[cols].T, w, keep[cols], damp)
        moved = w + scale * (solved - w)
        out[cols] = torch.where(keep[cols], moved, 0).to(weights.dtype)
    return out


class _Cbs(GradientMatrixMemory, Method):
    needs = frozenset({"train_data"})
    selection_family = "cbs"
    Config = CbsConfig

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        cfg = self.config
        params = ctx.prunable(model)
        sample = ctx.require_train_sample(self.name)
        with ctx.timer.phase("collect"):
            (batch,) = sample(1, cfg.num_grads * cfg.grad_batch_size)
            gm = gradient_matrix(
                model,
                params,
                batch,
                ctx.loss_fn,
                cfg.grad_batch_size,
                ctx.device,
                torch.float64,
                cfg.chunk,
                cfg.memory_limit_gb,
                self.name,
            )
        weights = gm.flatten({n: p.detach() for n, p in params.items()})
        prune_count = count_to_prune(weights.numel(), sparsity)
        with ctx.timer.phase("inverse"):
            scores = (
                woodfisher_scores(gm, weights, cfg.damp)
                if cfg.init == "woodfisher"
                else weights.abs()
            )
        with ctx.timer.phase("solve"):
            pruned = ~lowest_k(scores, prune_count)
            search = SwapSearch(gm, weights, pruned, cfg)
            info = search.run()
            keep = ~search.pruned
        if self.updates_weights:
            with ctx.timer.phase("update"):
                new = obs_update_through_g(gm, weights, keep, cfg.damp, cfg.update_scale)
                with torch.no_grad():
                    for name, value in gm.unflatten(new).items():
                        params[name].copy_(value.to(params[name].dtype))
        masks = gm.unflatten(keep)
        info["hamming_vs_initial"] = float((keep == ~pruned).logical_not().float().mean())
        info["grad_samples"] = cfg.num_grads * cfg.grad_batch_size
        return PruneResult(masks, info)


@register
class CbsSelection(_Cbs):
    name = "cbs_s"
    summary = "CBS (Yu et al. 2022) swap search minimising w_PᵀF_PPw_P from a WoodFisher mask"


@register
class CbsUpdate(_Cbs):
    name = "cbs_u"
    summary = "CBS mask + exact multi-weight OBS update of the surviving weights (CBS-U)"
    updates_weights = True
