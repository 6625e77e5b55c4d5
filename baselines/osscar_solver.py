"""OSSCAR's combinatorial solver (Meng et al., ICML 2024; mazumder-lab/OSSCAR, ``prune_algo.py``):
choose which input channels of a layer to keep so that the layer, refit by least squares on the
kept channels, reproduces its dense output.

The layer's weight is B (d × R: d = channels · k input columns, channel-major, k = k_h·k_w per
channel) and the objective is f(W) = −⟨W, XᵀY⟩ + ½⟨W, XᵀX W⟩ with XᵀY = XᵀX B, i.e.
½‖X(W − B)‖² up to a constant. As the reference:

- ``greedy_backward``: from the dense B and (XᵀX)⁻¹, remove one channel at a time, the one whose
  removal raises f least (½ Σ W_gᵀ [(XᵀX)⁻¹]_gg⁻¹ W_g), with a block-OBS update of W and of the
  inverse (``OSSCAR_fastprune`` with its default one channel per step); then the exact refit.
- ``local_search``: remove the ``num_swap`` cheapest kept channels (block OBS), add back the
  ``num_swap`` removed channels whose single addition lowers f most (Schur complement), refit,
  keep the swap if f fell (``OSSCAR_local_search``); on no improvement, return to the best support
  and halve ``num_swap`` (the reference's ``switch_lb`` < 1 branch), stopping at one.

Everything runs in float64; XᵀX must be positive definite (the caller damps it).
"""

from __future__ import annotations

import torch


def objective(w: torch.Tensor, xtx: torch.Tensor, xty: torch.Tensor) -> float:
    """f(W) = −⟨W, XᵀY⟩ + ½⟨W, XᵀX W⟩."""
    return float(-(w * xty).sum() + 0.5 * (w * (xtx @ w)).sum())


def channel_columns(channels: torch.Tensor, ksize: int) -> torch.Tensor:
    """The column indices of input ``channels`` (a bool mask or indices)."""
    if channels.dtype == torch.bool:
        channels = channels.nonzero().flatten()
    offsets = torch.arange(ksize, device=channels.device)
    return (channels.unsqueeze(1) * ksize + offsets).flatten()


def refit(xtx: torch.Tensor, xty: torch.Tensor, pruned: torch.Tensor, ksize: int) -> torch.Tensor:
    """The least-squares weights on the kept channels (zero on the pruned ones)."""
    cols = channel_columns(~pruned, ksize)
    w = torch.zeros_like(xty)
    if len(cols):
        w[cols] = torch.linalg.solve(xtx[cols][:, cols], xty[cols])
    return w


def _diagonal_blocks(matrix: torch.Tensor, channels: int, ksize: int) -> torch.Tensor:
    if ksize == 1:
        return matrix.diagonal().reshape(channels, 1, 1)
    index = torch.arange(channels, device=matrix.device)
    return matrix.reshape(channels, ksize, channels, ksize)[index, :, index, :]


def _block_quadratic(blocks: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """½ Σ vᵀ A⁻¹ v per channel, for blocks A (C, k, k) and values v (C, k, R)."""
    if blocks.shape[-1] == 1:  # one column per channel (1×1 convs, linear layers): a division
        return 0.5 * values.square().sum((1, 2)) / blocks.flatten()
    return 0.5 * (values * torch.linalg.solve(blocks, values)).sum((1, 2))


def removal_costs(
    w: torch.Tensor, hinv: torch.Tensor, pruned: torch.Tensor, ksize: int
) -> torch.Tensor:
    """The rise of f when each kept channel is removed and the rest re-optimised (block OBS);
    +inf for channels already removed."""
    channels = len(pruned)
    eye = torch.eye(ksize, dtype=w.dtype, device=w.device)
    # the removed channels' blocks are zero: any invertible stand-in
    blocks = torch.where(pruned[:, None, None], eye, _diagonal_blocks(hinv, channels, ksize))
    cost = _block_quadratic(blocks, w.reshape(channels, ksize, -1))
    return cost.masked_fill(pruned, float("inf"))


def remove_channels(
    w: torch.Tensor, hinv: torch.Tensor, channels: torch.Tensor, ksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-OBS removal of ``channels``: W and (XᵀX)⁻¹ restricted to the remaining support,
    exactly as refitting from scratch would give them."""
    cols = channel_columns(channels, ksize)
    inv_block = torch.linalg.inv(hinv[cols][:, cols])
    left = hinv[:, cols] @ inv_block
    w = w - left @ w[cols]
    hinv = hinv - left @ hinv[cols]
    w[cols] = 0
    hinv[cols] = 0
    hinv[:, cols] = 0
    return w, hinv


def addition_gains(
    xtx: torch.Tensor, xty: torch.Tensor, hinv: torch.Tensor, pruned: torch.Tensor, ksize: int
) -> torch.Tensor:
    """The fall of f when each removed channel alone is added back to the current support
    (½ gᵀ C⁻¹ g with the Schur complement C); −inf for kept channels."""
    channels = len(pruned)
    support = channel_columns(~pruned, ksize)
    h_s = hinv[support][:, support]
    cross = xtx[support].reshape(len(support), channels, ksize)  # X_Sᵀ X_j per channel j
    solved = (h_s @ xtx[support]).reshape(len(support), channels, ksize)
    schur = _diagonal_blocks(xtx, channels, ksize) - torch.einsum("sjk,sjl->jkl", cross, solved)
    fitted = h_s @ xty[support]  # the current weights on the support
    g = xty.reshape(channels, ksize, -1) - torch.einsum("sjk,sr->jkr", cross, fitted)
    eye = torch.eye(ksize, dtype=xtx.dtype, device=xtx.device)
    gain = _block_quadratic(torch.where(pruned[:, None, None], schur, eye), g)
    return gain.masked_fill(~pruned, float("-inf"))


def _support_inverse(xtx: torch.Tensor, pruned: torch.Tensor, ksize: int) -> torch.Tensor:
    cols = channel_columns(~pruned, ksize)
    hinv = torch.zeros_like(xtx)
    if len(cols):
        hinv[cols.unsqueeze(1), cols] = torch.linalg.inv(xtx[cols][:, cols])
    return hinv


def greedy_backward(
    b: torch.Tensor, xtx: torch.Tensor, xty: torch.Tensor, channels: int, keep: int
) -> torch.Tensor:
    """The removed-channel mask after eliminating ``channels − keep`` channels one by one."""
    ksize = b.shape[0] // channels
    w, hinv = b.clone(), torch.linalg.inv(xtx)
    pruned = torch.zeros(channels, dtype=torch.bool, device=b.device)
    for _ in range(channels - keep):
        channel = removal_costs(w, hinv, pruned, ksize).argmin()
        w, hinv = remove_channels(w, hinv, channel.reshape(1), ksize)
        pruned[channel] = True
    return pruned


def local_search(
    xtx: torch.Tensor,
    xty: torch.Tensor,
    pruned: torch.Tensor,
    max_iter: int = 20,
    num_swap: int = 100,
) -> tuple[torch.Tensor, int]:
    """The best removed-channel mask found by swaps from ``pruned``, and how many swaps were
    kept; its objective is never above that of ``pruned``."""
    ksize = xtx.shape[0] // len(pruned)

    def fitted(removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        hinv = _support_inverse(xtx, removed, ksize)
        w = hinv @ xty
        return hinv, w, float(-0.5 * (w * xty).sum())  # f at the least-squares weights

    best = pruned.clone()
    hinv, w, best_value = fitted(best)
    swaps = min(num_swap, int(best.sum()), int((~best).sum()))
    accepted = 0
    for _ in range(max_iter if swaps > 0 else 0):
        out = removal_costs(w, hinv, best, ksize).argsort()[:swaps]
        candidate = best.clone()
        candidate[out] = True
        _, reduced = remove_channels(w, hinv, out, ksize)
        back = addition_gains(xtx, xty, reduced, candidate, ksize).argsort(descending=True)
        candidate[back[:swaps]] = False
        candidate_hinv, candidate_w, value = fitted(candidate)
        if value < best_value - 1e-9 * abs(best_value):
            best, hinv, w, best_value = candidate, candidate_hinv, candidate_w, value
            accepted += 1
        elif swaps == 1:
            break
        else:
            swaps //= 2
    return best, accepted
