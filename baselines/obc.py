"""ExactOBS / Optimal Brain Compression, unstructured (Frantar & Alistarh, NeurIPS 2022).

For each output row, with the layer Hessian H = 2XXᵀ/N: remove weights greedily one at a time,
each time the weight with the smallest w_j²/[H⁻¹]_jj; update the row by −H⁻¹_{:,j}·w_j/[H⁻¹]_jj
and downdate H⁻¹ exactly (H⁻¹ ← H⁻¹ − H⁻¹_{:,j}H⁻¹_{j,:}/[H⁻¹]_jj). Rows are processed in batches.
As in the reference, every row's whole removal trajectory and its per-step losses ½w_j²/[H⁻¹]_jj
are computed, the layer's weights are allocated across rows by a global sort of those losses,
and each row is taken to its point of the trajectory. Rather than storing every intermediate row
(the reference keeps (columns + 1) × rows × columns floats: 43 GB for one ResNet-50 layer), the
final row is the closed-form least-squares solution on its kept support, which is what the
greedy trajectory reaches (tested). Dead inputs (H_jj = 0) get H_jj = 1 and a zero weight, so
they go first at no loss; an optional damping adds a share of H's mean diagonal (reference
default 0; 1% is added when H is singular, and recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from reflow.baselines.base import option
from reflow.baselines.layerwise import (
    DampedConfig,
    LayerwiseMethod,
    prunable_modules,
    weight_rows,
)
from reflow.baselines.registry import register
from reflow.baselines.spd import support_solve
from torch import nn

from reflow.masks import Pattern, prunable_parameters
from reflow.memory import MemoryNeed

#: Memory for the least-squares systems solved together at the end of a layer.
RECONSTRUCT_BYTES = 2**30


def prepare(
    hessian: torch.Tensor, rows: torch.Tensor, damp: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(H with damping and dead inputs handled, rows with dead inputs zeroed, H⁻¹, fell back)."""
    h = hessian.double().clone()
    diag = h.diagonal(dim1=-2, dim2=-1)
    if damp > 0:
        diag += damp * diag.mean(-1, keepdim=True)
    dead = diag == 0
    diag[dead] = 1.0
    rows = rows.masked_fill(dead.unsqueeze(1), 0.0)
    fell_back = False
    chol, info = torch.linalg.cholesky_ex(h)
    if bool((info != 0).any()):
        fell_back = True
        diag += 0.01 * diag.mean(-1, keepdim=True)
        chol = torch.linalg.cholesky(h)
    return h, rows, torch.cholesky_inverse(chol), fell_back


def greedy_removal(
    rows: torch.Tensor,
    inverse: torch.Tensor,
    parallel: int = 32,
    pattern: Pattern | None = None,
    group_of_row: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's removal order and per-step losses ½w_j²/[H⁻¹]_jj, removing all columns (or,
    with an N:M ``pattern``, M − N of every M consecutive columns: a full group's weights are no
    longer candidates, as the reference's nmprune).

    ``rows``: (R, d); ``inverse``: (G, d, d), row r downdating its own copy of
    ``inverse[group_of_row[r]]`` (default: ``inverse[r]``). Copies are made ``parallel`` rows at a
    time, so the working memory is parallel·d², not R·d² (43 GB for one ResNet-50 layer).
    Returns (order, losses), both (R, steps).
    """
    r_total, d = rows.shape
    if group_of_row is None:
        group_of_row = torch.arange(r_total, device=rows.device)
    total_steps = d if pattern is None else d // pattern.m * (pattern.m - pattern.n)
    order = torch.empty(r_total, total_steps, dtype=torch.long, device=rows.device)
    losses = torch.empty(r_total, total_steps, dtype=rows.dtype, device=rows.device)
    for start in range(0, r_total, parallel):
        stop = min(r_total, start + parallel)
        w = rows[start:stop].clone()
        hinv = inverse[group_of_row[start:stop]]  # advanced indexing: a copy per row
        count = stop - start
        idx = torch.arange(count, device=rows.device)
        removed = torch.zeros_like(w, dtype=torch.bool)
        for step in range(total_steps):
            diag = hinv.diagonal(dim1=-2, dim2=-1)
            scores = (w.square() / diag).masked_fill(removed, torch.inf)
            if pattern is not None:
                full = removed.view(count, -1, pattern.m).sum(-1, keepdim=True) >= (
                    pattern.m - pattern.n
                )
                scores = scores.masked_fill(
                    full.expand(-1, -1, pattern.m).reshape(count, d), torch.inf
                )
            j = scores.argmin(1)
            order[start:stop, step] = j
            losses[start:stop, step] = scores[idx, j] / 2
            row = hinv[idx, j, :]
            dj = diag[idx, j]
            w -= row * (w[idx, j] / dj).unsqueeze(1)
            removed[idx, j] = True
            w.masked_fill_(removed, 0.0)
            if step == total_steps - 1:
                break
            row = row / dj.sqrt().unsqueeze(1)
            hinv.baddbmm_(row.unsqueeze(2), row.unsqueeze(1), alpha=-1)  # in place: no d² temp
    return order, losses


def allocate(losses: torch.Tensor, count: int) -> torch.Tensor:
    """Removals per row: each row's share of the ``count`` smallest step losses of the layer."""
    flat = losses.reshape(-1)
    per_row = torch.zeros(losses.shape[0], dtype=torch.long, device=losses.device)
    if count:
        chosen = torch.topk(flat, count, largest=False).indices
        per_row += torch.bincount(chosen // losses.shape[1], minlength=losses.shape[0])
    return per_row


def reconstruct_chunk(d: int) -> int:
    """Rows whose d×d float64 systems (gathered H, masked system, the solver's copy) are solved
    together: 64, or fewer so that they stay within `RECONSTRUCT_BYTES`."""
    return max(1, min(64, RECONSTRUCT_BYTES // (3 * d * d * 8)))


def working_bytes(groups: int, rows: int, d: int, parallel: int) -> int:
    """What solving one layer adds to its Hessian: H and H⁻¹ in float64 and H⁻¹ in float32 per
    group, then the larger of the greedy pass's per-row H⁻¹ copies and the final solves."""
    greedy = min(parallel, groups * rows) * d * d * 4
    solve = min(reconstruct_chunk(d), groups * rows) * 3 * d * d * 8
    return groups * d * d * (8 + 8 + 4) + max(greedy, solve)


def reconstruct(rows: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The least-squares row on each row's kept support: w_K + H_KK⁻¹H_KP w_P, w_P = 0.

    Batched over rows with different supports (`support_solve`); ``hessian`` is (R, d, d), one
    per row.
    """
    k = keep.to(rows.dtype)
    shift = support_solve(hessian, keep, (hessian @ (rows * (1 - k)).unsqueeze(-1)).squeeze(-1))
    return (rows + shift) * k


@dataclass(frozen=True)
class ObcConfig(DampedConfig):
    inputs: str = option("dense", "layer inputs: dense (the dense model's, as OBC) or sequential")
    hessian_dtype: str = option("float64", "H accumulated in float64 (OBC) or float32")
    damp: float = option(0.0, "share of H's mean diagonal added to it (OBC default 0)")
    parallel: int = option(32, "rows processed together in the greedy removal")


@register
class ExactOBS(LayerwiseMethod):
    name = "obc"
    summary = "ExactOBS (OBC, Frantar & Alistarh 2022): greedy exact OBS per row, layer-wise"
    updates_weights = True
    Config = ObcConfig

    def memory_needed(self, model: nn.Module, scope: str) -> MemoryNeed:
        need = super().memory_needed(model, scope)
        modules = prunable_modules(model, prunable_parameters(model, scope)).values()
        shapes = [weight_rows(m).shape for m in modules]
        extra = max(working_bytes(*shape, self.config.parallel) for shape in shapes)
        return replace(
            need,
            nbytes=need.nbytes + extra,
            what=f"{need.what} and the largest layer's greedy working set",
            lower=f"{need.lower}, or obc.parallel",
        )

    def solve_layer(
        self,
        hessian: torch.Tensor,
        rows: torch.Tensor,
        prune_count: int,
        pattern: Pattern | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        groups, per_group, d = rows.shape
        h, rows, inverse, fell_back = prepare(hessian, rows, self.config.damp)
        group_of_row = torch.arange(groups, device=rows.device).repeat_interleave(per_group)
        flat = rows.reshape(-1, d)
        # the greedy pass in float32, as the reference (its H.float()); the final rows in float64
        order, losses = greedy_removal(
            flat.float(), inverse.float(), self.config.parallel, pattern, group_of_row
        )
        if pattern is None:
            per_row = allocate(losses, prune_count)
        else:  # every row removes M − N of each group: no allocation across rows
            per_row = torch.full((flat.shape[0],), order.shape[1], device=rows.device)
        steps = torch.arange(order.shape[1], device=rows.device).unsqueeze(0)
        removed = torch.zeros_like(flat, dtype=torch.bool)
        removed.scatter_(1, order, steps < per_row.unsqueeze(1))
        keep = ~removed
        new = torch.empty_like(flat)
        chunk = reconstruct_chunk(d)
        for start in range(0, flat.shape[0], chunk):
            sl = slice(start, start + chunk)
            new[sl] = reconstruct(flat[sl], h[group_of_row[sl]], keep[sl])
        chosen = losses.double().masked_select(steps < per_row.unsqueeze(1))
        return (
            new.reshape(rows.shape),
            keep.reshape(rows.shape),
            {"greedy_loss": float(chosen.sum()), "damping_fallback": float(fell_back)},
        )
