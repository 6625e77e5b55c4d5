"""CHITA (Benbaki et al., ICML 2023): pruning as an ℓ0-constrained quadratic problem solved through
the gradient matrix G, never forming the p × p Hessian.

    min_β  Q(β) = ½(β − w̄)ᵀ(F + λI)(β − w̄) + (1/m)·ḡᵀβ   subject to ‖β‖₀ ≤ k,

with F = GᵀG/n over n gradients of mini-batches of m samples (the first-order term is optional,
off by default as in the reference scripts). The reference's default algorithm, as here:

1. an initial active set: one IHT step from w̄ (step 1/L, L = 1.05·(σ_max(G)²/n + λ)) keeping
   ⌈1.5k⌉ entries;
2. on the active set, IHT with an exact line search: the step along the gradient restricted to
   the support when that step leaves the support unchanged, else a search that doubles the step
   (at most 5 times) while the objective falls; until the relative change is below 1e-7;
3. the active set grows with full IHT steps (the step doubled up to 10 times while the objective
   falls) by the entries they bring in, and step 2 repeats;
4. a back-solve: the closed-form minimiser of Q on the final support (`lowrank`).

``chita_s`` applies the support to the original weights; ``chita_u`` also takes the back-solved
weights. Where we differ from the reference: ``chita_u`` always back-solves, while the reference's
default path returns the IHT iterate on the support (its back-solve is an option); ours is the exact
minimiser of Q on the same support. CHITA++ runs ``stages`` such problems along a sparsity schedule,
recomputing gradients at the current weights each stage. Weights already zero stay pruned (their
gradient columns are masked), like the reference's restriction to columns with nonzero gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.gradients import (
    GradientConfig,
    GradientMatrix,
    GradientMatrixMemory,
    gradient_matrix,
)
from reflow.baselines.lowrank import constrained_minimiser
from reflow.baselines.registry import register
from torch import nn

from reflow.errors import ReflowError
from reflow.masks import count_to_prune, lowest_k

SCHEDULES = ("poly", "exp", "linear", "const", "mfac")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class ChitaConfig(GradientConfig):
    damp: float = option(1e-4, "λ: ridge weight ½λ‖β − w̄‖² (the reference's l2)")
    first_order: bool = option(False, "add the first-order term (1/m)·ḡᵀβ (reference: off)")
    stages: int = option(
        1, "T: CHITA++ stages, gradients recomputed at each stage's weights", minimum=1
    )
    schedule: str = option("poly", f"stage sparsities: {', '.join(SCHEDULES)}", choices=SCHEDULES)
    base_level: float = option(0.1, "sparsity of the first stage when stages > 1")
    iterations: int = option(100, "IHT iterations per active set, and active-set rounds", minimum=1)
    line_search: int = option(5, "step doublings in one IHT line search")
    growth_search: int = option(10, "step doublings when growing the active set")
    active_factor: float = option(1.5, "initial active set, as a multiple of k", minimum=1)
    tolerance: float = option(1e-7, "relative objective change that ends the IHT iterations")
    dtype: str = option(
        "float64", "gradient matrix precision: float64 or float32", choices=tuple(DTYPES)
    )

    def __post_init__(self) -> None:
        super().__post_init__()


def stage_sparsities(stages: int, base: float, target: float, schedule: str) -> list[float]:
    """The reference's `generate_schedule`: sparsities of stages 1..T ending at ``target``."""
    if stages == 1:
        return [target]
    t = np.arange(stages)
    if schedule == "poly":
        levels = target + (base - target) * (1 - t / (stages - 1)) ** 3
    elif schedule == "exp":
        mult = (target - base) * 2 ** (stages - 1) / (2 ** (stages - 1) - 1)
        levels = base + mult * (2.0**t - 1) / 2.0**t
    elif schedule == "linear":
        levels = base + t * (target - base) / (stages - 1)
    elif schedule == "const":
        levels = np.full(stages, target)
    else:  # mfac: geometric in the density
        mult = ((1 - target) / (1 - base)) ** (1 / stages)
        levels = 1 - (1 - base) * mult ** (t + 1)
    return [float(x) for x in levels]


def keep_top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest |values| (exactly k, ties by index)."""
    return lowest_k(values.abs(), values.numel() - k)


def largest_singular_value(matrix: torch.Tensor) -> float:
    """σ_max by randomized subspace iteration (a 1.05 margin is applied by the caller)."""
    generator = torch.Generator(device=matrix.device).manual_seed(0)
    block = torch.randn(
        matrix.shape[1], 8, dtype=matrix.dtype, device=matrix.device, generator=generator
    )
    for _ in range(6):
        block, _ = torch.linalg.qr(matrix.T @ (matrix @ block))
    return float(torch.linalg.matrix_norm(matrix @ block, ord=2))


class Problem:
    """Q over the surviving weights, in the reference's residual form: with y = Gw̄ and
    r = y − Gβ = G(w̄ − β), Q = ‖r‖²/2n + λ‖β − w̄‖²/2 + (α/n)(1ᵀy − 1ᵀr)."""

    def __init__(self, gt: torch.Tensor, w_bar: torch.Tensor, damp: float, alpha: float) -> None:
        self.gt, self.w_bar, self.damp, self.alpha = gt, w_bar, damp, alpha
        self.n = gt.shape[1]
        self.y = gt.T @ w_bar
        self.y_sum = float(self.y.sum())
        self.w_norm2 = float(w_bar.square().sum())

    def value(self, distance2: float, r: torch.Tensor) -> float:
        """Q from the residual and ‖β − w̄‖² (over all weights)."""
        quad = float(r @ r) / (2 * self.n)
        return (
            quad + self.damp * distance2 / 2 + self.alpha * (self.y_sum - float(r.sum())) / self.n
        )


class ActiveSet:
    """The rows of Gᵀ (weights) an IHT round works on, gathered once: every product of the round
    is a matrix-vector product with this block."""

    def __init__(self, problem: Problem, rows: torch.Tensor | None = None) -> None:
        """``rows`` None means every weight (no copy of G)."""
        self.problem, self.rows = problem, rows
        self.gt = problem.gt if rows is None else problem.gt[rows]
        self.w_bar = problem.w_bar if rows is None else problem.w_bar[rows]
        self.outside2 = problem.w_norm2 - float(self.w_bar.square().sum())  # ‖w̄‖² off the set

    def residual(self, beta: torch.Tensor) -> torch.Tensor:
        return self.problem.y - self.gt.T @ beta

    def value(self, beta: torch.Tensor, r: torch.Tensor) -> float:
        return self.problem.value(float((beta - self.w_bar).square().sum()) + self.outside2, r)

    def gradient(self, beta: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        p = self.problem
        return self.gt @ ((p.alpha - r) / p.n) + p.damp * (beta - self.w_bar)


class ActiveSetIHT:
    """The reference's Active_IHTCDLS (its coordinate-descent refinement is off there too)."""

    def __init__(self, problem: Problem, k: int, config: ChitaConfig) -> None:
        self.problem, self.k, self.config = problem, k, config

    @staticmethod
    def threshold(values: torch.Tensor, k: int) -> torch.Tensor:
        return torch.where(keep_top(values, k), values, 0)

    def line_search_step(
        self, act: ActiveSet, beta: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's hard_thresholding_ls: the exact step along the gradient restricted to
        the support if it keeps the support, else a doubling search on the thresholded step."""
        p = self.problem
        grad = act.gradient(beta, r)
        support = beta != 0
        off = grad[~support].abs()
        if off.numel() == 0:
            return beta, r
        top_off = float(off.max())
        g_sup, b_sup = grad[support], beta[support]
        same = torch.sign(b_sup) == torch.sign(g_sup)
        denom = g_sup.abs() * (2 * same.to(grad.dtype) - 1) + top_off
        ok = same | (g_sup.abs() < top_off)
        step_change = float(torch.where(ok, b_sup.abs() / denom, torch.inf).min())
        g_s = torch.where(support, grad, 0)
        g_dir = act.gt.T @ g_s  # G·g_S
        norm2 = float(g_s.square().sum())
        curvature = float(g_dir @ g_dir) / p.n + p.damp * norm2
        # a zero restricted gradient gives the reference 0/0: its comparison then fails and it
        # falls through to the search, as here
        optimal = norm2 / curvature if curvature > 0 else math.inf
        if optimal < step_change:
            return beta - optimal * g_s, r + optimal * g_dir
        best, best_r, best_f = beta, r, act.value(beta, r)
        step = step_change / (1 + 1e-4)
        for _ in range(self.config.line_search):
            trial = self.threshold(beta - step * grad, self.k)
            trial_r = act.residual(trial)
            f = act.value(trial, trial_r)
            if f >= best_f:
                break
            best, best_r, best_f = trial, trial_r, f
            step *= 2
        return best, best_r

    def on_active_set(self, act: ActiveSet, beta: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Vanilla_IHTCDLS: one IHT step, then line-search steps until Q settles."""
        p, cfg = self.problem, self.config
        lipschitz = 1.05 * (largest_singular_value(act.gt) ** 2 / p.n + p.damp)
        beta = self.threshold(beta - act.gradient(beta, act.residual(beta)) / lipschitz, self.k)
        r = act.residual(beta)
        f_old = act.value(beta, r)
        steps = 0
        for it in range(cfg.iterations):
            beta, r = self.line_search_step(act, beta, r)
            f = act.value(beta, r)
            steps += 1
            if it > 0 and abs(f_old - f) <= max(abs(f), abs(f_old), 1 / p.n) * cfg.tolerance:
                break
            f_old = f
        return beta, steps

    def solve(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Support and IHT weights over all surviving weights (zero outside the support)."""
        p, cfg = self.problem, self.config
        size = p.w_bar.numel()
        everything = ActiveSet(p)
        full_l = 1.05 * (largest_singular_value(p.gt) ** 2 / p.n + p.damp)
        budget = min(size, max(self.k, math.ceil(cfg.active_factor * self.k)))
        start = p.w_bar - everything.gradient(p.w_bar, everything.residual(p.w_bar)) / full_l
        rows = keep_top(start, budget).nonzero().squeeze(1)
        beta = p.w_bar.clone()  # the first round starts from w̄ on the active set
        rounds = steps = 0
        for _ in range(cfg.iterations):
            rounds += 1
            act = ActiveSet(p, rows)
            local, inner = self.on_active_set(act, beta[rows])
            steps += inner
            beta = torch.zeros_like(p.w_bar)
            beta[rows] = local
            r = act.residual(local)
            f = everything.value(beta, r)
            step = 1 / (2 * 1.05 * (largest_singular_value(act.gt) ** 2 / p.n + p.damp))
            full_grad = everything.gradient(beta, r)
            accepted = None
            for _ in range(cfg.growth_search):
                trial = self.threshold(beta - step * full_grad, self.k)
                f_new = everything.value(trial, everything.residual(trial))
                entering = trial.nonzero().squeeze(1)
                entering = entering[~torch.isin(entering, rows)]
                if entering.numel() and f_new < f:
                    accepted = (trial, entering)
                elif f_new >= f:
                    break
                step *= 2
            del act
            if accepted is None:
                break
            beta = accepted[0]
            rows = torch.cat([rows, accepted[1]]).sort().values
        return beta, {"iht_steps": steps, "active_rounds": rounds, "active_size": rows.numel()}


def chita_stage(
    gm: GradientMatrix, weights: torch.Tensor, keep_count: int, config: ChitaConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """One CHITA problem: returns (support mask over all weights, back-solved weights, info)."""
    alive = gm.transposed.abs().sum(1) > 0
    alive &= weights != 0
    columns = alive.nonzero().squeeze(1)
    if keep_count > columns.numel():
        raise ReflowError(
            f"CHITA must keep {keep_count} weights but only {columns.numel()} have a nonzero "
            "gradient; more gradients (chita.num_grads) would fix this"
        )
    alpha = 1.0 / config.grad_batch_size if config.first_order else 0.0
    gt = gm.transposed[columns]
    problem = Problem(gt, weights[columns].to(gt.dtype), config.damp, alpha)
    local, info = ActiveSetIHT(problem, keep_count, config).solve()
    support = local != 0
    g = gt.T  # (n, |alive|), a view
    everything = ActiveSet(problem)
    solved = constrained_minimiser(g, problem.w_bar, support, config.damp, alpha)
    info["objective"] = everything.value(solved, everything.residual(solved))
    magnitude = keep_top(problem.w_bar, keep_count)
    reference = constrained_minimiser(g, problem.w_bar, magnitude, config.damp, alpha)
    info["objective_mp_support"] = everything.value(reference, everything.residual(reference))
    info["hamming_iht_vs_magnitude"] = float((support != magnitude).float().mean())
    mask = torch.zeros_like(weights, dtype=torch.bool)
    mask[columns[support]] = True
    new = torch.zeros_like(weights)
    new[columns] = solved.to(weights.dtype)
    return mask, new, info


class _Chita(GradientMatrixMemory, Method):
    needs = frozenset({"train_data"})
    selection_family = "chita"
    Config = ChitaConfig

    def matrix_dtype(self) -> torch.dtype:
        return DTYPES[self.config.dtype]

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        cfg = self.config
        params = ctx.prunable(model)
        original = {n: p.detach().clone() for n, p in params.items()}
        total = sum(p.numel() for p in params.values())
        levels = stage_sparsities(cfg.stages, cfg.base_level, sparsity, cfg.schedule)
        sample = ctx.require_train_sample(self.name)
        per_stage = cfg.num_grads * cfg.grad_batch_size
        with ctx.timer.phase("collect"):
            ((x_all, y_all),) = sample(1, per_stage * cfg.stages)
        info: dict = {}
        masks = None
        for stage, level in enumerate(levels):
            batch = (
                x_all[stage * per_stage : (stage + 1) * per_stage],
                y_all[stage * per_stage : (stage + 1) * per_stage],
            )
            with ctx.timer.phase("collect"):
                gm = gradient_matrix(
                    model,
                    params,
                    batch,
                    ctx.loss_fn,
                    cfg.grad_batch_size,
                    ctx.device,
                    DTYPES[cfg.dtype],
                    cfg.chunk,
                    cfg.memory_limit_gb,
                    self.name,
                )
            weights = gm.flatten({n: p.detach() for n, p in params.items()})
            keep_count = total - count_to_prune(total, level)
            with ctx.timer.phase("solve"):
                mask, solved, info = chita_stage(gm, weights, keep_count, cfg)
            masks, values = gm.unflatten(mask), gm.unflatten(solved)
            del gm
            with ctx.timer.phase("update"), torch.no_grad():
                for name, value in values.items():
                    params[name].copy_(value.to(params[name].dtype))
        if not self.updates_weights:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(original[name])
        info["grad_samples"] = per_stage * cfg.stages
        return PruneResult(masks, info)


@register
class ChitaSelection(_Chita):
    name = "chita_s"
    summary = "CHITA (Benbaki et al. 2023) support: active-set IHT on ½(β−w̄)ᵀ(F+λI)(β−w̄); no update"


@register
class ChitaUpdate(_Chita):
    name = "chita_u"
    summary = "CHITA support + back-solve: closed-form minimiser of its quadratic on the support"
    updates_weights = True
