"""Evaluation with signal-collapse probes in a single pass over the test split.

The probe is a forward hook on every normalisation layer (BatchNorm, GroupNorm/LayerNorm, …) that
accumulates the variance of its output over all elements (batch, channels, positions; paper
Eq. 24–25). Comparing these per layer between the dense and the pruned model on the same inputs
gives the variance ratio that reveals collapse, in networks with or without BatchNorm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from reflow.data import Batch
from reflow.norms import norm_layers


@dataclass
class Evaluation:
    top1: float
    top5: float | None
    loss: float
    samples: int
    #: Count of test inputs predicted as each class.
    predictions: list[int]
    #: Output variance over all elements, per normalisation layer name.
    norm_variance: dict[str, float]
    #: Per example, in evaluation order: the predicted class and the true label (CPU, int64).
    predicted: torch.Tensor
    labels: torch.Tensor

    @property
    def top_class_share(self) -> float:
        """Share of inputs mapped to the most common predicted class (1.0 = full collapse)."""
        return max(self.predictions) / self.samples


class _VarianceAccumulator:
    """Variance over all elements of every batch seen, by the shifted-data algorithm.

    Each output is shifted by a fixed value near its mean (the first batch's mean, kept in the
    output's dtype so the same number is subtracted every time) before summing, so the variance
    stays accurate when it is tiny next to the mean: exactly the collapsed case this probe exists
    to measure, where E[x²] - E[x]² would cancel to noise.
    """

    def __init__(self) -> None:
        self.shift: torch.Tensor | None = None
        self.count = 0
        self.sum = 0.0
        self.sumsq = 0.0

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        out = output.detach()
        if self.shift is None:
            self.shift = out.mean()
        centred = out - self.shift
        self.sum += float(centred.sum())
        self.sumsq += float(centred.square().sum())
        self.count += out.numel()

    @property
    def variance(self) -> float:
        mean = self.sum / self.count
        return self.sumsq / self.count - mean * mean


@contextmanager
def variance_probe(model: nn.Module) -> Iterator[dict[str, _VarianceAccumulator]]:
    """Hooks on every normalisation layer for the duration of the block; yields accumulators."""
    modules = norm_layers(model)
    accumulators = {name: _VarianceAccumulator() for name in modules}
    handles = [modules[n].register_forward_hook(acc) for n, acc in accumulators.items()]
    try:
        yield accumulators
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    num_classes: int,
    device: torch.device | str = "cpu",
    probe_samples: int | None = None,
    progress: bool = False,
) -> Evaluation:
    """Top-1/top-5 (%), mean loss, prediction histogram and per-layer output variances.

    The variance probe covers the first ``probe_samples`` inputs (all when None, none when 0),
    since it costs about as much as a third of the forward pass; accuracy always covers them all.
    """
    model.eval()
    correct1 = correct5 = samples = 0
    loss_sum = 0.0
    topk = min(5, num_classes)
    predicted, labels = [], []
    with ExitStack() as probing:
        accumulators = probing.enter_context(variance_probe(model)) if probe_samples != 0 else {}
        for x, y in tqdm(batches, desc="evaluate", leave=False, disable=not progress):
            if probe_samples is not None and samples >= probe_samples:
                probing.close()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            top = logits.topk(topk, dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(dim=1).sum())
            predicted.append(top[:, 0].cpu())
            labels.append(y.cpu())
            samples += len(y)
    predicted_all = torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.int64)
    return Evaluation(
        top1=100.0 * correct1 / samples,
        top5=100.0 * correct5 / samples if num_classes > 5 else None,
        loss=loss_sum / samples,
        samples=samples,
        predictions=torch.bincount(predicted_all, minlength=num_classes).tolist(),
        norm_variance={n: a.variance for n, a in accumulators.items()},
        predicted=predicted_all,
        labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64),
    )


def variance_ratios(pruned: Evaluation, dense: Evaluation) -> dict[str, float]:
    """``var_pruned / var_dense`` per normalisation layer (paper's signal-collapse measure)."""
    return {n: pruned.norm_variance[n] / dense.norm_variance[n] for n in dense.norm_variance}
