"""Gradients for the second-order methods: per-sample (or per-mini-batch) gradients, vectorised,
and the gradient matrix G that CHITA, CBS and M-FAC work through without ever forming GᵀG.

G has one row per gradient (the gradient of the mean loss over a mini-batch of m samples) and one
column per prunable weight. It is stored transposed, (p, n), so that a weight's gradient column
is contiguous (CBS reads single columns) and a layer's columns are a contiguous row range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from reflow.errors import ReflowError
from reflow.masks import prunable_parameters
from reflow.memory import MemoryNeed
from reflow.options import check, option


@dataclass(frozen=True)
class GradientConfig:
    """Options every method built on n loss gradients has (defaults: WoodFisher's and CBS's)."""

    num_grads: int = option(1000, "n: gradients, each of the loss on a mini-batch", minimum=1)
    grad_batch_size: int = option(1, "m: samples per gradient", minimum=1)
    damp: float = option(1e-5, "λ: dampening added to the Fisher diagonal")
    chunk: int = option(64, "gradients computed per vectorised call (memory vs speed)", minimum=1)
    memory_limit_gb: float = option(8.0, "refuse gradient or Fisher storage larger than this")

    def __post_init__(self) -> None:
        check(self)
        if self.damp <= 0:
            raise ReflowError(f"damp must be > 0, got {self.damp}")


def per_sample_gradients(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    group: int = 1,
    chunk: int = 64,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield gradients of the loss on consecutive groups of ``group`` samples, ``chunk`` at a time.

    Per-sample gradients (``group == 1``) are vectorised with ``torch.func.vmap`` over ``grad``;
    mini-batch gradients use one ordinary backward pass per group, which is twice as fast on a
    CPU (measured on resnet20: 1.6 vs 2.9 ms per sample for groups of 32). The model runs in eval
    mode, so BN uses (and never updates) its running statistics.
    """
    model.eval()
    if group > 1:
        yield from _minibatch_gradients(model, params, x, y, loss_fn, group, chunk)
        return
    frozen = {
        k: v.detach()
        for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
        if k not in params
    }
    names = list(params)

    def loss_of(
        weights: tuple[torch.Tensor, ...], xs: torch.Tensor, ys: torch.Tensor
    ) -> torch.Tensor:
        return loss_fn(
            functional_call(model, {**frozen, **dict(zip(names, weights, strict=True))}, (xs,)), ys
        )

    weights = tuple(p.detach() for p in params.values())
    grad_fn = vmap(grad(loss_of), in_dims=(None, 0, 0))
    n = x.shape[0] // group
    xs, ys = x[: n * group].reshape(n, group, *x.shape[1:]), y[: n * group].reshape(n, group)
    for start in range(0, n, chunk):
        grads = grad_fn(weights, xs[start : start + chunk], ys[start : start + chunk])
        yield dict(zip(names, grads, strict=True))


def _minibatch_gradients(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    group: int,
    chunk: int,
) -> Iterator[dict[str, torch.Tensor]]:
    names, weights = list(params), list(params.values())
    n = x.shape[0] // group
    for start in range(0, n, chunk):
        stacked: list[list[torch.Tensor]] = [[] for _ in names]
        for g in range(start, min(n, start + chunk)):
            xs, ys = x[g * group : (g + 1) * group], y[g * group : (g + 1) * group]
            for slot, grad_ in zip(
                stacked, torch.autograd.grad(loss_fn(model(xs), ys), weights), strict=True
            ):
                slot.append(grad_)
        yield {name: torch.stack(slot) for name, slot in zip(names, stacked, strict=True)}


@dataclass
class GradientMatrix:
    """Gᵀ, (p, n): column block ``slice(offsets[i], offsets[i + 1])`` of G is layer ``names[i]``."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    transposed: torch.Tensor

    @property
    def count(self) -> int:
        """n: the number of gradients."""
        return self.transposed.shape[1]

    @property
    def size(self) -> int:
        """p: the number of weights."""
        return self.transposed.shape[0]

    def layer(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-layer tensors as one (p,) vector in G's column order."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names]).to(self.transposed)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            name: vector[self.layer(i)].reshape(shape)
            for i, (name, shape) in enumerate(zip(self.names, self.shapes, strict=True))
        }


def gradient_matrix_need(
    params: dict[str, nn.Parameter],
    count: int,
    dtype: torch.dtype,
    limit_gb: float | None = None,
    owner: str = "",
) -> MemoryNeed:
    """The memory G of ``count`` gradients over ``params`` takes."""
    total = sum(p.numel() for p in params.values())
    itemsize = torch.empty((), dtype=dtype).element_size()
    return MemoryNeed(
        total * count * itemsize,
        f"the gradient matrix ({count:,} gradients × {total:,} weights, {dtype})",
        f"{owner}.num_grads" if owner else "the number of gradients",
        limit_gb,
        f"{owner}.memory_limit_gb" if owner else None,
    )


class GradientMatrixMemory:
    """Mixin for a method that holds G (``config.num_grads`` gradients over the scope's weights):
    the memory guard's estimate, from shapes and options alone."""

    def matrix_dtype(self) -> torch.dtype:
        return torch.float64

    def memory_needed(self, model: nn.Module, scope: str) -> MemoryNeed:
        cfg = self.config  # type: ignore[attr-defined]
        params = prunable_parameters(model, scope)
        return gradient_matrix_need(
            params,
            cfg.num_grads,
            self.matrix_dtype(),
            cfg.memory_limit_gb,
            self.name,  # type: ignore[attr-defined]
        )


def gradient_matrix(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    group: int,
    device: torch.device,
    dtype: torch.dtype = torch.float64,
    chunk: int = 64,
    limit_gb: float | None = None,
    owner: str = "",
) -> GradientMatrix:
    """G of the ``len(batch) // group`` mini-batch gradients, masked to surviving weights
    (a pruned weight's column is zero, so it never re-enters)."""
    x, y = batch
    count = x.shape[0] // group
    gradient_matrix_need(params, count, dtype, limit_gb, owner).check(device)
    numels = [p.numel() for p in params.values()]
    total = sum(numels)
    offsets = [0]
    for n in numels:
        offsets.append(offsets[-1] + n)
    transposed = torch.empty(total, count, dtype=dtype, device=device)
    alive = {n: (p.detach() != 0) for n, p in params.items()}
    row = 0
    x, y = x.to(device), y.to(device)
    for grads in per_sample_gradients(model, params, x, y, loss_fn, group, chunk):
        chunk_rows = next(iter(grads.values())).shape[0]
        for i, (name, g) in enumerate(grads.items()):
            masked = (g * alive[name]).reshape(chunk_rows, -1)
            transposed[offsets[i] : offsets[i + 1], row : row + chunk_rows] = masked.T.to(dtype)
        row += chunk_rows
    return GradientMatrix(
        tuple(params), tuple(p.shape for p in params.values()), tuple(offsets), transposed
    )
