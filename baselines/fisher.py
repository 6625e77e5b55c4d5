"""Block-diagonal empirical Fisher and the OBS algebra the second-order baselines share.

F = λI + (1/N) Σ g gᵀ over N gradients (each of the loss on m samples, masked to surviving
weights), cut into contiguous blocks of B weights that never cross a layer (a layer's last block is
zero-padded; padding is never selected and never updated). Shaped like SparseGPT's per-layer
solver: `BlockFisher.add_batch` accumulates, `inverse` solves all blocks in one batched call,
`free` drops the buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from reflow.baselines.spd import support_solve

from reflow.errors import ReflowError

INVERSES = ("direct", "woodbury")


@dataclass(frozen=True)
class BlockLayout:
    """Where each layer's weights sit in the (blocks, B) arrangement."""

    names: tuple[str, ...]
    numels: tuple[int, ...]
    shapes: tuple[torch.Size, ...]
    block_size: int

    @classmethod
    def of(cls, params: dict[str, torch.Tensor], block_size: int) -> BlockLayout:
        if block_size < 1:
            raise ReflowError(f"block_size must be at least 1, got {block_size}")
        return cls(
            tuple(params),
            tuple(p.numel() for p in params.values()),
            tuple(p.shape for p in params.values()),
            block_size,
        )

    @property
    def blocks_per_layer(self) -> list[int]:
        return [-(-n // self.block_size) for n in self.numels]

    @property
    def num_blocks(self) -> int:
        return sum(self.blocks_per_layer)

    def to_blocks(self, tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """Per-layer tensors (with ``batch_dims`` leading dims) → (..., blocks, B), zero-padded."""
        parts = []
        for name, n, nb in zip(self.names, self.numels, self.blocks_per_layer, strict=True):
            t = tensors[name]
            flat = t.reshape(*t.shape[:batch_dims], n)
            pad = nb * self.block_size - n
            if pad:
                flat = torch.nn.functional.pad(flat, (0, pad))
            parts.append(flat.reshape(*t.shape[:batch_dims], nb, self.block_size))
        return torch.cat(parts, dim=batch_dims)

    def from_blocks(self, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
        """(blocks, B) → per-layer tensors, padding dropped."""
        out = {}
        for part, name, n, shape in zip(
            blocks.split(self.blocks_per_layer), self.names, self.numels, self.shapes, strict=True
        ):
            out[name] = part.reshape(-1)[:n].reshape(shape)
        return out

    def padding(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool (blocks, B): True where a slot is padding, not a weight."""
        ones = {
            n: torch.zeros(s, dtype=torch.bool, device=device)
            for n, s in zip(self.names, self.shapes, strict=True)
        }
        real = self.to_blocks({n: ~t for n, t in ones.items()})
        return ~real

    def fisher_bytes(self, dtype: torch.dtype = torch.float64) -> int:
        return self.num_blocks * self.block_size**2 * torch.empty((), dtype=dtype).element_size()


class BlockFisher:
    """Accumulates the block-diagonal empirical Fisher and inverts it.

    ``inverse="direct"`` sums G_bᵀG_b per block and inverts λI + F_b/N with one batched Cholesky;
    ``"woodbury"`` keeps F_b⁻¹ and applies the Sherman–Morrison step of every gradient to all
    blocks at once (WoodFisher's recursion, starting from I/λ).
    """

    def __init__(
        self,
        layout: BlockLayout,
        num_grads: int,
        damp: float,
        inverse: str = "direct",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        memory_limit_gb: float = 8.0,
    ) -> None:
        if inverse not in INVERSES:
            raise ReflowError(f"inverse must be one of {', '.join(INVERSES)}, got {inverse!r}")
        if damp <= 0:
            raise ReflowError(f"damp must be > 0, got {damp}")
        need = layout.fisher_bytes(dtype) / 2**30
        if need > memory_limit_gb:
            raise ReflowError(
                f"the Fisher blocks need {need:.1f} GiB ({layout.num_blocks} blocks of "
                f"{layout.block_size}²), over the {memory_limit_gb:.1f} GiB limit; lower block_size"
                " or raise memory_limit_gb"
            )
        self.layout, self.num_grads, self.damp, self.mode = layout, num_grads, damp, inverse
        self.seen = 0
        b = layout.block_size
        eye = torch.eye(b, device=device, dtype=dtype).expand(layout.num_blocks, b, b)
        self.matrix = eye.clone() / damp if inverse == "woodbury" else torch.zeros_like(eye)

    def add_batch(self, grads: dict[str, torch.Tensor]) -> None:
        """Add per-sample gradients: each tensor is (c, *param shape)."""
        g = self.layout.to_blocks(grads, batch_dims=1).to(self.matrix.dtype)  # (c, blocks, B)
        self.seen += g.shape[0]
        if self.mode == "direct":
            self.matrix += torch.einsum("cnb,cnd->nbd", g, g)
            return
        for sample in g:  # Sherman–Morrison with F_k = F_{k-1} + g gᵀ / N
            u = torch.bmm(self.matrix, sample.unsqueeze(-1)).squeeze(-1)  # (blocks, B)
            denom = self.num_grads + (sample * u).sum(-1)
            self.matrix -= u.unsqueeze(-1) * u.unsqueeze(-2) / denom[:, None, None]

    def inverse(self) -> torch.Tensor:
        """F⁻¹ for every block, (blocks, B, B)."""
        if self.seen != self.num_grads:
            raise ReflowError(f"Fisher expected {self.num_grads} gradients, got {self.seen}")
        if self.mode == "woodbury":
            return self.matrix
        b = self.layout.block_size
        fisher = self.matrix / self.num_grads + self.damp * torch.eye(
            b, dtype=self.matrix.dtype, device=self.matrix.device
        )
        return torch.cholesky_inverse(torch.linalg.cholesky(fisher))

    def free(self) -> None:
        del self.matrix


def obs_statistic(weights: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """OBS saliency w_q² / (2 [F⁻¹]_qq) per weight; weights (blocks, B), inverse (blocks, B, B)."""
    return weights.square() / (2 * torch.diagonal(inverse, dim1=-2, dim2=-1))


def obs_update_exact(
    weights: torch.Tensor, inverse: torch.Tensor, pruned: torch.Tensor
) -> torch.Tensor:
    """Exact multi-weight OBS: δw = −F⁻¹[:, K] ([F⁻¹]_KK)⁻¹ w_K for the pruned set K of each block.

    Batched over blocks with varying |K|: z_K = ([F⁻¹]_KK)⁻¹ w_K, z elsewhere 0.
    """
    z = support_solve(inverse, pruned, weights)
    return -torch.bmm(inverse, z.unsqueeze(-1)).squeeze(-1)


def obs_update_woodfisher(
    weights: torch.Tensor, inverse: torch.Tensor, pruned: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """WoodFisher form: the (scaled) sum of independent single-weight OBS updates."""
    coeff = pruned.to(inverse.dtype) * weights / torch.diagonal(inverse, dim1=-2, dim2=-1)
    return -scale * torch.bmm(inverse, coeff.unsqueeze(-1)).squeeze(-1)


def obs_loss_increase(
    weights: torch.Tensor, inverse: torch.Tensor, pruned: torch.Tensor
) -> torch.Tensor:
    """Predicted loss increase ½ w_Kᵀ ([F⁻¹]_KK)⁻¹ w_K of the exact update, per block."""
    z = support_solve(inverse, pruned, weights)
    return 0.5 * (weights * pruned * z).sum(-1)
