"""The layer-wise reconstruction seam shared by OBC, SparseGPT and Wanda: calibration inputs of
each prunable layer captured with forward hooks, a per-layer solver object in SparseGPT's shape
(`LayerHessian.add_batch` → solve → `free`), per-layer sparsity targets, and two input modes.

A layer's weight is seen as rows over input columns: a Linear row has ``in_features`` columns; a
Conv2d row has C_in/groups · k_h · k_w columns, its inputs unfolded (``torch.nn.functional.unfold``
with the conv's stride, padding and dilation), so ``W_row · X`` is the conv output. Grouped and
depthwise convs are handled per group: each group has its own H over its own input channels (a
depthwise 3×3 layer is C independent 9-column problems); H has shape (groups, d, d).

Input modes, recorded in the row: ``dense`` (every layer sees the dense model's inputs: one pass
captures every layer, then all are pruned, as OBC) and ``sequential`` (layer ℓ sees the inputs
produced by the already pruned layers before it: one capture per layer, stopped right after it,
as SparseGPT; only one layer's H is held at a time).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from reflow.baselines.base import Method, PruneContext, PruneResult, option
from torch import nn

from reflow.data import Batch
from reflow.masks import Pattern, global_masks, pattern_fits, prunable_parameters
from reflow.memory import MemoryNeed
from reflow.options import check
from reflow.timing import PhaseTimer

INPUT_MODES = ("dense", "sequential")
ALLOCATIONS = ("uniform", "mp")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class LayerwiseConfig:
    """Options every layer-wise method has (defaults: SparseGPT's and Wanda's)."""

    samples: int = option(1024, "calibration images (their own seeded stream)", minimum=1)
    batch_size: int = option(128, "calibration images per forward pass", minimum=1)
    inputs: str = option(
        "sequential", "layer inputs: dense (the dense model's) or sequential", choices=INPUT_MODES
    )
    allocation: str = option(
        "uniform",
        "per-layer sparsity: uniform (every layer at the target) or mp (each layer at the "
        "density the global magnitude mask gives it)",
        choices=ALLOCATIONS,
    )
    hessian_dtype: str = option(
        "float32", "H accumulated in float64 or float32", choices=tuple(DTYPES)
    )
    memory_limit_gb: float = option(8.0, "refuse Hessians larger than this")

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class DampedConfig(LayerwiseConfig):
    damp: float = option(
        0.01, "share of H's mean diagonal added to it (SparseGPT: 0.01)", minimum=0.0
    )


def groups_of(module: nn.Module) -> int:
    return module.groups if isinstance(module, nn.Conv2d) else 1


def weight_rows(module: nn.Module) -> torch.Tensor:
    """The weight as (groups, rows per group, columns)."""
    g = groups_of(module)
    return module.weight.detach().reshape(g, module.weight.shape[0] // g, -1)


def set_weight_rows(module: nn.Module, rows: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.copy_(rows.reshape(module.weight.shape).to(module.weight.dtype))


def input_columns(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """A layer input as (groups, columns d, N·positions): W_g @ X_g is the output of group g."""
    if isinstance(module, nn.Linear):
        return inp.reshape(-1, inp.shape[-1]).T.unsqueeze(0)
    cols = F.unfold(
        inp,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )  # (B, C_in·kh·kw, L), channel-major
    g = module.groups
    b, _, positions = cols.shape
    return cols.reshape(b, g, -1, positions).permute(1, 2, 0, 3).reshape(g, -1, b * positions)


class LayerHessian:
    """H = 2XXᵀ/N of one layer over N calibration images (per group), as OBC and SparseGPT
    accumulate it; ``diagonal_only`` keeps just diag(H) (all Wanda needs)."""

    def __init__(
        self, module: nn.Module, dtype: torch.dtype = torch.float64, diagonal_only: bool = False
    ) -> None:
        self.module, self.dtype, self.diagonal_only = module, dtype, diagonal_only
        g, _, d = weight_rows(module).shape
        device = module.weight.device
        shape = (g, d) if diagonal_only else (g, d, d)
        self.hessian: torch.Tensor | None = torch.zeros(shape, dtype=dtype, device=device)
        self.samples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        count = inp.shape[0]
        x = input_columns(self.module, inp.detach()).to(self.dtype)
        self.hessian *= self.samples / (self.samples + count)
        self.samples += count
        scale = 2.0 / self.samples
        if self.diagonal_only:
            self.hessian += scale * x.square().sum(-1)
        else:
            self.hessian += scale * (x @ x.transpose(-1, -2))

    def free(self) -> None:
        self.hessian = None


def input_major_columns(module: nn.Module) -> torch.Tensor:
    """Column order with the input channel fastest at each kernel position (OBC's columnslast),
    so that N:M groups of consecutive columns run along input channels as cuSPARSELt expects."""
    d = weight_rows(module).shape[-1]
    if not isinstance(module, nn.Conv2d):
        return torch.arange(d)
    kh, kw = module.kernel_size
    return torch.arange(d).reshape(d // (kh * kw), kh, kw).permute(1, 2, 0).flatten()


def prunable_modules(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, nn.Module]:
    """The Conv2d/Linear module of each prunable weight, by weight name."""
    modules = dict(model.named_modules())
    return {name: modules[name.rsplit(".", 1)[0] if "." in name else ""] for name in params}


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the layer of interest has run."""


def execution_order(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> list[str]:
    """Weight names in the order their layers run in a forward pass."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None)
        for n, m in modules.items()
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in modules if n not in order]


def hessian_bytes(modules: Iterable[nn.Module], dtype: torch.dtype, diagonal_only: bool) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for m in modules:
        g, _, d = weight_rows(m).shape
        total += g * d * (1 if diagonal_only else d) * size
    return total


def hessians_need(
    modules: Iterable[nn.Module],
    inputs: str,
    dtype: torch.dtype,
    diagonal_only: bool,
    limit_gb: float | None = None,
    owner: str = "",
) -> MemoryNeed:
    """The Hessians held at once: every layer's with dense inputs, the largest one's with
    sequential inputs."""
    modules = list(modules)
    nbytes = (
        hessian_bytes(modules, dtype, diagonal_only)
        if inputs == "dense"
        else max(hessian_bytes([m], dtype, diagonal_only) for m in modules)
    )
    return MemoryNeed(
        nbytes,
        f"the layer Hessians ({inputs} inputs, {dtype})",
        f"{owner}.hessian_dtype (float32) or use {owner}.inputs=sequential",
        limit_gb,
        f"{owner}.memory_limit_gb" if owner else None,
    )


@torch.no_grad()
def capture(
    model: nn.Module,
    hessians: dict[str, LayerHessian],
    batches: list[Batch],
    device: torch.device,
    stop_after: str | None = None,
) -> None:
    """Feed every batch's layer inputs to ``hessians``; stop each pass after ``stop_after``."""
    was_training = model.training
    model.eval()

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            hessians[name].add_batch(inputs[0])
            if name == stop_after:
                raise _Stop

        return record

    handles = [h.module.register_forward_hook(hook(n)) for n, h in hessians.items()]
    try:
        for x, _ in batches:
            with suppress(_Stop):
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def exactly(
    sample: Callable[[int, int], list[Batch]], samples: int, batch_size: int
) -> list[Batch]:
    """``samples`` calibration images in batches of ``batch_size`` (the last one cut short)."""
    batches = sample(-(-samples // batch_size), batch_size)
    excess = len(batches) * batch_size - samples
    if excess:
        x, y = batches[-1]
        batches[-1] = (x[: len(x) - excess], y[: len(y) - excess])
    return batches


def layer_targets(
    params: dict[str, nn.Parameter], sparsity: float, allocation: str
) -> dict[str, float]:
    """Per-layer sparsity: the target everywhere, or each layer's share under global MP."""
    if allocation == "uniform":
        return {n: sparsity for n in params}
    masks = global_masks({n: p.detach().abs() for n, p in params.items()}, sparsity)
    return {n: 1.0 - float(m.float().mean()) for n, m in masks.items()}


def reconstruction_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """½ tr(ΔW H ΔWᵀ) summed over groups: ‖ΔW X‖²/N, the layer's output error per image."""
    d = delta.to(hessian.dtype)
    return float(0.5 * torch.einsum("grc,gcd,grd->", d, hessian, d))


def magnitude_error(rows: torch.Tensor, hessian: torch.Tensor, prune_count: int) -> float:
    """The same error for the layer's magnitude mask at the same count, without update."""
    flat = rows.abs().reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if prune_count:
        keep[torch.topk(flat, prune_count, largest=False).indices] = False
    return reconstruction_error(rows * ~keep.view_as(rows), hessian)


Solver = Callable[[str, nn.Module, LayerHessian, float], dict[str, float]]


def run_layerwise(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[Batch],
    targets: dict[str, float],
    solver: Solver,
    inputs: str,
    device: torch.device,
    dtype: torch.dtype,
    diagonal_only: bool = False,
    need: MemoryNeed | None = None,
    timer: PhaseTimer | None = None,
) -> dict[str, dict[str, float]]:
    """Capture inputs (timed as ``collect``) and solve layer by layer, after checking ``need``
    (default: the Hessians' own); returns the solver's facts per layer."""
    timer = timer or PhaseTimer(device)
    modules = prunable_modules(model, params)
    order = execution_order(model, modules, batches[0][0].to(device))
    (need or hessians_need(modules.values(), inputs, dtype, diagonal_only)).check(device)
    facts = {}
    if inputs == "dense":
        hessians = {n: LayerHessian(modules[n], dtype, diagonal_only) for n in order}
        with timer.phase("collect"):
            capture(model, hessians, batches, device)
        for name in order:
            facts[name] = solver(name, modules[name], hessians[name], targets[name])
            hessians[name].free()
        return facts
    for name in order:
        hessian = {name: LayerHessian(modules[name], dtype, diagonal_only)}
        with timer.phase("collect"):
            capture(model, hessian, batches, device, stop_after=name)
        facts[name] = solver(name, modules[name], hessian[name], targets[name])
        hessian[name].free()
    return facts


class LayerwiseMethod(Method):
    """A method that reconstructs each layer from calibration inputs: subclasses implement
    `solve_layer`; this class draws the calibration images, sets per-layer targets, runs the
    capture in the configured input mode, and records per-layer reconstruction errors beside
    those of the layer's magnitude mask at the same count."""

    needs = frozenset({"activations"})
    supports_pattern = True
    #: Whether only diag(H) is needed (Wanda).
    diagonal_only: ClassVar[bool] = False

    def memory_needed(self, model: nn.Module, scope: str) -> MemoryNeed:
        cfg = self.config
        modules = prunable_modules(model, prunable_parameters(model, scope))
        return hessians_need(
            modules.values(),
            cfg.inputs,
            DTYPES[cfg.hessian_dtype],
            self.diagonal_only,
            cfg.memory_limit_gb,
            self.name,
        )

    @abstractmethod
    def solve_layer(
        self,
        hessian: torch.Tensor,
        rows: torch.Tensor,
        prune_count: int,
        pattern: Pattern | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(new rows, keep mask, facts) for rows (groups, R, d) pruning ``prune_count``; with a
        ``pattern``, N of every M consecutive columns are kept (columns already ordered input
        channel fastest)."""

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> PruneResult:
        cfg = self.config
        params = ctx.prunable(model)
        original = {n: p.detach().clone() for n, p in params.items()}
        sample = ctx.require_activation_sample(self.name)
        with ctx.timer.phase("collect"):
            batches = exactly(sample, cfg.samples, cfg.batch_size)
        targets = layer_targets(params, sparsity, cfg.allocation)
        masks: dict[str, torch.Tensor] = {}
        layer_info: dict[str, dict[str, float]] = {}

        def solver(name: str, module: nn.Module, lh: LayerHessian, target: float) -> dict:
            rows = weight_rows(module).double()
            pattern = (
                ctx.pattern if ctx.pattern and pattern_fits(module.weight, ctx.pattern) else None
            )
            count = round(target * rows.numel())
            if ctx.pattern is not None:  # a layer the pattern does not fit stays dense
                count = rows.numel() - rows.numel() * pattern.n // pattern.m if pattern else 0
            with ctx.timer.phase("solve"):
                if pattern is None:
                    new, keep, facts = self.solve_layer(lh.hessian, rows, count)
                else:
                    order = input_major_columns(module)
                    back = order.argsort()
                    hess = (
                        lh.hessian[..., order]
                        if self.diagonal_only
                        else (lh.hessian[..., order, :][..., :, order])
                    )
                    new, keep, facts = self.solve_layer(hess, rows[..., order], count, pattern)
                    new, keep = new[..., back], keep[..., back]
            set_weight_rows(module, new)
            masks[name] = keep.reshape(module.weight.shape)
            if not self.diagonal_only:
                h = lh.hessian.double()
                facts["recon_error_updated"] = reconstruction_error(rows - new, h)
                facts["recon_error_masked"] = reconstruction_error(rows - rows * keep, h)
                facts["recon_error_magnitude"] = magnitude_error(rows, h, count)
            layer_info[name] = facts
            return facts

        run_layerwise(
            model,
            params,
            batches,
            targets,
            solver,
            cfg.inputs,
            ctx.device,
            DTYPES[cfg.hessian_dtype],
            self.diagonal_only,
            self.memory_needed(model, ctx.scope),
            ctx.timer,
        )
        if not self.updates_weights:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(original[name])
        info: dict[str, float] = {"activation_samples": cfg.samples}
        return self.adopt_search(PruneResult(masks, info, layer_info=layer_info))

    def adopt_search(self, result: PruneResult) -> PruneResult:
        """Report the reconstruction error of this member's own weights: the updated rows, or
        (a "-S" member) the original rows under the mask."""
        if self.diagonal_only:
            return result
        own = "recon_error_updated" if self.updates_weights else "recon_error_masked"
        layers = {n: {**f, "recon_error": f[own]} for n, f in result.layer_info.items()}
        info = dict(result.info)
        info["recon_error"] = sum(f["recon_error"] for f in layers.values())
        info["recon_error_magnitude"] = sum(f["recon_error_magnitude"] for f in layers.values())
        info["layers_worse_than_magnitude"] = sum(
            f["recon_error"] > f["recon_error_magnitude"] * (1 + 1e-9) for f in layers.values()
        )
        return PruneResult(result.masks, info, result.model, layers)


def split_count(count: int, parts: int) -> torch.Tensor:
    """``count`` spread over ``parts`` as evenly as possible (the first ones get the remainder)."""
    base, extra = divmod(count, parts)
    return torch.tensor([base + (i < extra) for i in range(parts)])
