"""SparseGPT (Frantar & Alistarh, ICML 2023) on convolutions and linear layers.

Column-sequential OBS with lazy block updates, as the reference's ``fasterprune``: with
H = 2XXᵀ/N damped by 1% of its mean diagonal and U the upper Cholesky factor of H⁻¹, process the
columns in blocks of 128; at the start of a block choose its mask from w²/U_ii² (the lowest of the
whole block, all rows together); then, column by column, zero the masked weights, spread the
error e = (w − q)/U_ii over the block's remaining columns, and after the block update every later
column at once (W[:, later] −= E·U[block, later]). The per-column loss (w − q)²/U_ii² sums to
½ tr(ΔW H ΔWᵀ) (tested). Dead inputs get H_jj = 1 and a zero weight. Grouped and depthwise
convs run their groups as a batch, with one mask choice across all of them per block.

Where we differ from the reference: a block prunes round(k·i₂/d) minus the weights pruned so far
(i₂ the block's end, d the columns, k the layer's count), so the layer loses exactly k weights;
the reference prunes the int(n·s) + 1 entries at or below its block threshold (n the block's
entries), one more than the target per block (ties aside).

``sparsegpt_s`` keeps SparseGPT's mask on the original weights (its selection without the
update), like the paper's "-S" variants.
"""

from __future__ import annotations

import torch
from reflow.baselines.layerwise import DampedConfig, LayerwiseMethod
from reflow.baselines.registry import register

from reflow.masks import Pattern, lowest_k


def sparsegpt_rows(
    hessian: torch.Tensor,
    rows: torch.Tensor,
    prune_count: int,
    damp: float = 0.01,
    blocksize: int = 128,
    pattern: Pattern | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """SparseGPT on rows (groups, R, d) with H (groups, d, d); returns (new rows, keep, loss).

    A ``pattern`` chooses the pruned set per group of M columns as the reference's
    prunen/prunem mode (the M − N lowest w²/U_ii² of each row's group, chosen when the group's
    first column is reached).
    """
    w = rows.double().clone()
    h = hessian.double().clone()
    diag = h.diagonal(dim1=-2, dim2=-1)
    dead = diag == 0
    diag[dead] = 1.0
    w.masked_fill_(dead.unsqueeze(1), 0.0)
    diag += damp * diag.mean(-1, keepdim=True)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    upper = torch.linalg.cholesky(inverse, upper=True)  # (G, d, d)
    d = w.shape[-1]
    pruned = torch.zeros_like(w, dtype=torch.bool)
    loss = 0.0
    done = 0
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        block = w[..., i1:i2].clone()
        u = upper[..., i1:i2, i1:i2]
        quantised = torch.zeros_like(block)
        errors = torch.zeros_like(block)
        if pattern is not None:
            block_mask = torch.zeros_like(block, dtype=torch.bool)
        else:
            target = round(prune_count * i2 / d) - done
            scores = block.square() / u.diagonal(dim1=-2, dim2=-1).unsqueeze(1).square()
            block_mask = ~lowest_k(scores.reshape(-1), target).view_as(scores)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern.m == 0:
                group = block[..., i : i + pattern.m].square() / (
                    u.diagonal(dim1=-2, dim2=-1)[..., i : i + pattern.m].unsqueeze(1).square()
                )
                low = group.topk(pattern.m - pattern.n, dim=-1, largest=False).indices
                block_mask[..., i : i + pattern.m].scatter_(-1, low, True)
            col = block[..., i]
            uii = u[..., i, i].unsqueeze(-1)  # (G, 1)
            q = col.masked_fill(block_mask[..., i], 0.0)
            quantised[..., i] = q
            err = (col - q) / uii
            loss += float(((col - q) / uii).square().sum()) / 2
            block[..., i:] -= err.unsqueeze(-1) * u[..., i, i:].unsqueeze(-2)
            errors[..., i] = err
        w[..., i1:i2] = quantised
        pruned[..., i1:i2] = block_mask
        done += int(block_mask.sum())
        w[..., i2:] -= errors @ upper[..., i1:i2, i2:]
    return w, ~pruned, loss


class _SparseGPT(LayerwiseMethod):
    selection_family = "sparsegpt"
    Config = DampedConfig

    def solve_layer(
        self,
        hessian: torch.Tensor,
        rows: torch.Tensor,
        prune_count: int,
        pattern: Pattern | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        new, keep, loss = sparsegpt_rows(
            hessian, rows, prune_count, self.config.damp, pattern=pattern
        )
        return new, keep, {"sparsegpt_loss": loss}


@register
class SparseGPT(_SparseGPT):
    name = "sparsegpt"
    summary = "SparseGPT (Frantar & Alistarh 2023): column-sequential OBS, lazy block updates"
    updates_weights = True


@register
class SparseGPTSelection(_SparseGPT):
    name = "sparsegpt_s"
    summary = "SparseGPT's mask on the original weights (its selection without the update)"
