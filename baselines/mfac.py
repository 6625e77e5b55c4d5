"""M-FAC pruning (Frantar, Kurtic & Alistarh, NeurIPS 2021): inverse-Fisher-vector products for
F = λI + (1/m)Σ g gᵀ per block of weights, from m gradients, without forming F.

The pruner, as the reference's ``MFACPruner``: in R geometric steps towards the target (default
16), recompute m gradients (each the mean loss over a mini-batch of 32) at the current weights,
masked to surviving weights; score each surviving weight by w²/(2[F⁻¹]_ii); prune the lowest
globally to this step's sparsity; move the rest by the sum of the single-weight OBS updates,
δw = −F⁻¹(Σ_q w_q e_q / [F⁻¹]_qq). The reference fills only m − 1 of its m gradient rows; all m
are used here. Blocks are contiguous runs of ``block_size`` weights within a layer (a pruned
weight has a zero gradient column, so it is decoupled from its block).

``algorithm="recursion"`` builds M-FAC's vectors v_i = F_{i−1}⁻¹g_i one gradient at a time, as
written; the default ``"cholesky"`` obtains the same vectors from one Cholesky factorisation
(`reflow.baselines.lowrank`; tested equal), which is far faster on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from reflow.baselines.fisher import BlockLayout
from reflow.baselines.gradients import GradientConfig, per_sample_gradients
from reflow.baselines.lowrank import (
    mfac_factors,
    mfac_inverse_diagonal,
    mfac_inverse_matvec,
    mfac_recursion,
)
from reflow.baselines.registry import register
from torch import nn

from reflow.masks import count_to_prune, lowest_k, prunable_parameters
from reflow.memory import MemoryNeed

ALGORITHMS = ("cholesky", "recursion")


@dataclass(frozen=True)
class MfacConfig(GradientConfig):
    num_grads: int = option(64, "m: gradients per step (reference script default)", minimum=1)
    grad_batch_size: int = option(32, "samples per gradient (reference script default)", minimum=1)
    chunk: int = option(16, "gradients computed per call (memory vs speed)", minimum=1)
    block_size: int = option(128, "weights per Fisher block (reference default 128)", minimum=1)
    steps: int = option(
        16, "R: geometric pruning steps, gradients recomputed before each", minimum=1
    )
    algorithm: str = option(
        "cholesky", "cholesky (one factorisation) or recursion (as written)", choices=ALGORITHMS
    )

    def __post_init__(self) -> None:
        super().__post_init__()


def step_sparsities(target: float, steps: int, start: float = 0.0) -> list[float]:
    """The reference's schedule: density shrinks by the same factor at every step."""
    factor = ((1.0 - target) / (1.0 - start)) ** (1.0 / steps)
    return [1.0 - (1.0 - start) * factor ** (j + 1) for j in range(steps)]


@register
class Mfac(Method):
    name = "mfac"
    summary = "M-FAC (Frantar et al. 2021): blocked inverse-Fisher OBS, 16 recomputation steps"
    needs = frozenset({"train_data"})
    updates_weights = True
    Config = MfacConfig

    def memory_needed(self, model: nn.Module, scope: str) -> MemoryNeed:
        cfg = self.config
        layout = BlockLayout.of(prunable_parameters(model, scope), cfg.block_size)
        return MemoryNeed(
            layout.num_blocks * layout.block_size * cfg.num_grads * 8 * 3,
            f"M-FAC's gradient blocks ({layout.num_blocks:,} blocks × {cfg.num_grads} gradients × "
            f"{cfg.block_size} weights, float64, with its factors)",
            f"{self.name}.num_grads or {self.name}.block_size",
            cfg.memory_limit_gb,
            f"{self.name}.memory_limit_gb",
        )

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        cfg = self.config
        self.memory_needed(model, ctx.scope).check(ctx.device)
        params = ctx.prunable(model)
        layout = BlockLayout.of(params, cfg.block_size)
        padding = layout.padding(ctx.device)
        sample = ctx.require_train_sample(self.name)
        per_step = cfg.num_grads * cfg.grad_batch_size
        with ctx.timer.phase("collect"):
            ((x_all, y_all),) = sample(1, per_step * cfg.steps)
        total = sum(p.numel() for p in params.values())
        alive = ~padding
        for step, level in enumerate(step_sparsities(sparsity, cfg.steps)):
            x = x_all[step * per_step : (step + 1) * per_step].to(ctx.device)
            y = y_all[step * per_step : (step + 1) * per_step].to(ctx.device)
            weights = layout.to_blocks({n: p.detach() for n, p in params.items()}).double()
            with ctx.timer.phase("collect"):
                grads = self._gradients(model, params, layout, x, y, ctx)  # (blocks, m, B)
                grads = grads * alive.unsqueeze(1)
            with ctx.timer.phase("inverse"):
                if cfg.algorithm == "recursion":
                    v, d = mfac_recursion(grads, cfg.damp)
                else:
                    v, d = mfac_factors(grads, cfg.damp)
                del grads
                diag = mfac_inverse_diagonal(v, d, cfg.damp)
            with ctx.timer.phase("solve"):
                scores = torch.where(alive, weights.square() / (2 * diag), torch.inf)
                already = int((~alive & ~padding).sum())
                drop = count_to_prune(total, level) - already
                dropped = torch.zeros_like(alive)
                if drop > 0:
                    flat = ~lowest_k(scores.reshape(-1), drop)
                    dropped = flat.view_as(alive) & alive
            with ctx.timer.phase("update"):
                coeff = torch.where(dropped, weights / diag, 0.0)
                delta = -mfac_inverse_matvec(v, d, coeff, cfg.damp)
                alive = alive & ~dropped
                new = torch.where(alive, weights + delta, 0.0)
                with torch.no_grad():
                    for name, value in layout.from_blocks(new).items():
                        params[name].copy_(value.to(params[name].dtype))
            del v, d
        masks = layout.from_blocks(alive)
        return PruneResult(
            masks, {"grad_samples": per_step * cfg.steps, "fisher_blocks": layout.num_blocks}
        )

    def _gradients(
        self,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        layout: BlockLayout,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: PruneContext,
    ) -> torch.Tensor:
        """The m mini-batch gradients arranged in blocks: (blocks, m, B), float64."""
        cfg = self.config
        rows = [
            layout.to_blocks(g, batch_dims=1).double()
            for g in per_sample_gradients(
                model, params, x, y, ctx.loss_fn, cfg.grad_batch_size, cfg.chunk
            )
        ]
        return torch.cat(rows).permute(1, 0, 2).contiguous()
