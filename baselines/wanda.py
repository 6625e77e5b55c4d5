"""Wanda (Sun et al., ICLR 2024): prune by |W_ij|·‖X_j‖₂, compared within each output row, with
no update. ‖X_j‖₂ comes from the calibration inputs of the layer (the diagonal of H = 2XXᵀ/N is
enough). Each row prunes ⌊d·s⌋ weights as in the reference, plus one more on the first rows until
the layer meets its target count exactly (so allocation=mp compares like for like with mp).
"""

from __future__ import annotations

import torch
from reflow.baselines.layerwise import LayerwiseConfig, LayerwiseMethod, split_count
from reflow.baselines.registry import register

from reflow.masks import Pattern, pattern_masks


def wanda_keep(
    rows: torch.Tensor,
    column_norms: torch.Tensor,
    prune_count: int,
    pattern: Pattern | None = None,
) -> torch.Tensor:
    """Keep mask for rows (groups, R, d) with ‖X_j‖ per group column (groups, d); with a
    pattern, the N highest scores of every M consecutive columns of a row."""
    scores = rows.abs() * column_norms.unsqueeze(1)
    if pattern is not None:
        return pattern_masks({"rows": scores.reshape(-1, scores.shape[-1])}, pattern)[
            "rows"
        ].view_as(rows)
    flat = scores.reshape(-1, scores.shape[-1])
    counts = split_count(prune_count, flat.shape[0]).to(flat.device)
    ranks = flat.argsort(dim=1, stable=True).argsort(dim=1)
    return (ranks >= counts.unsqueeze(1)).view_as(rows)


@register
class Wanda(LayerwiseMethod):
    name = "wanda"
    summary = "Wanda (Sun et al. 2024): |W|·‖X‖ per output row from calibration inputs; no update"
    diagonal_only = True
    Config = LayerwiseConfig

    def solve_layer(
        self,
        hessian: torch.Tensor,
        rows: torch.Tensor,
        prune_count: int,
        pattern: Pattern | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        keep = wanda_keep(rows, hessian.double().clamp_min(0).sqrt(), prune_count, pattern)
        return rows * keep, keep, {}
