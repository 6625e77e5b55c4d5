"""BatchNorm recalibration: REFLOW and the earlier variants the benchmark compares it with
(registered as repairs in `reflow.repairs`).

REFLOW (Saikumar & Varghese, 2025) resets every BN layer's running mean and variance and
re-estimates them on calibration batches as an exact cumulative average (PyTorch's
``momentum=None``), with only the BN layers in train mode, no gradients, and no parameter
changed. The variants differ only in reset and momentum:

====== ===== ============ ==========================================
repair reset momentum     from
====== ===== ============ ==========================================
reflow yes   cumulative   Signal Collapse in One-Shot Pruning (2025)
adabn  no    0.1 (EMA)    EagleEye adaptive BN (Li et al., 2020)
bnt    yes   0.1 (EMA)    OBC BN tuning (Frantar & Alistarh, 2022)
====== ===== ============ ==========================================
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from reflow.data import Batch
from reflow.errors import ReflowError
from reflow.norms import batchnorm_layers


def select_layers(names: list[str], layers: str) -> list[str]:
    """``all``, ``first:K`` or ``last:K`` of ``names`` (the paper's layer-order ablation)."""
    if layers == "all":
        return names
    where, _, count = layers.partition(":")
    if where not in {"first", "last"} or not count.isdigit():
        raise ReflowError(f"layers must be 'all', 'first:K' or 'last:K', got {layers!r}")
    k = int(count)
    if not 0 <= k <= len(names):
        raise ReflowError(
            f"--recalibrate-layers {layers} asks for {k} layers but the model has {len(names)} "
            "that this repair works on"
        )
    return names[:k] if where == "first" else names[len(names) - k :]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    reset: bool = True,
    momentum: float | None = None,
    layers: str = "all",
    device: torch.device | str | None = None,
    progress: bool = False,
) -> int:
    """Re-estimate BN running statistics from ``batches``; return the number of samples used.

    Only the selected BN layers run in train mode (others, and dropout, stay in eval mode); each
    module's mode and each BN layer's momentum are restored afterwards. Weights are never touched.
    """
    bns = batchnorm_layers(model)
    if not bns:
        raise ReflowError(
            f"{type(model).__name__} has no BatchNorm layer, so there are no statistics to "
            "recalibrate; use --repair none for this model"
        )
    chosen = [bns[n] for n in select_layers(list(bns), layers)]
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in chosen}
    device = device or next(model.parameters()).device
    samples = 0
    try:
        model.eval()
        for bn in chosen:
            if reset:
                bn.reset_running_stats()
            bn.momentum = momentum
            bn.train()
        for x, _ in tqdm(batches, desc="recalibrate BN", leave=False, disable=not progress):
            model(x.to(device, non_blocking=True))
            samples += len(x)
    finally:
        for module, training in modes.items():
            module.train(training)
        for bn, m in momenta.items():
            bn.momentum = m
    return samples


def reflow(
    model: nn.Module, batches: Iterable[Batch], layers: str = "all", progress: bool = False
) -> int:
    """REFLOW: reset and re-estimate BN statistics (exact cumulative average); returns samples."""
    return recalibrate_bn(
        model, batches, reset=True, momentum=None, layers=layers, progress=progress
    )
