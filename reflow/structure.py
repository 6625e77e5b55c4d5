"""What a physically smaller network is worth: parameters, multiply-accumulates and measured
latency against the dense network on the same device, batch sizes 1 and 128 (warm-up, then the
median of repeats, synchronised on GPUs)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reflow.data import ImageData
from reflow.timing import synchronize


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def multiply_accumulates(model: nn.Module, image: torch.Tensor) -> int:
    """MACs of one forward pass on one image (PyTorch's FLOP counter halved)."""
    with FlopCounterMode(display=False) as counter:
        model(image[:1])
    return counter.get_total_flops() // 2


@torch.no_grad()
def paired_latency_ms(
    first: nn.Module, second: nn.Module, batch: torch.Tensor, repeats: int, warmup: int = 3
) -> tuple[float, float]:
    """Median wall time (ms) of a forward pass over ``batch`` for two models, timed in
    alternation so that both see the same machine load."""
    device = batch.device
    for _ in range(warmup):
        first(batch)
        second(batch)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for model, bucket in zip((first, second), times, strict=True):
            synchronize(device)
            start = time.perf_counter()
            model(batch)
            synchronize(device)
            bucket.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def structure_report(
    dense: nn.Module, pruned: nn.Module, data: ImageData, device: torch.device
) -> dict[str, float]:
    """Row columns comparing ``pruned`` with ``dense``: parameters, MACs, latency and speed-up."""
    x, _ = next(iter(data.test_batches(128)))
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    was = dense.training, pruned.training
    dense.eval(), pruned.eval()
    row: dict[str, float] = {
        "params_dense": parameter_count(dense),
        "params": parameter_count(pruned),
        "macs_dense": multiply_accumulates(dense, x),
        "macs": multiply_accumulates(pruned, x),
    }
    for size, repeats in ((1, 50), (128, 10)):
        dense_ms, pruned_ms = paired_latency_ms(dense, pruned, x[:size], repeats)
        row[f"latency_b{size}_dense_ms"] = dense_ms
        row[f"latency_b{size}_ms"] = pruned_ms
        row[f"speedup_b{size}"] = dense_ms / pruned_ms
    dense.train(was[0]), pruned.train(was[1])
    return row
