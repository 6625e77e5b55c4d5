"""Calibration images distilled from the dense model's BatchNorm statistics (ZeroQ, Cai et al.
2020, ``classification/distill_data.py``): data-free calibration for the ``distilled`` source.

Each batch starts from standard-normal noise and is optimised with Adam (lr 0.5, ReduceLROnPlateau
with patience 100 and min lr 1e-4, 500 iterations) so that, at every BatchNorm, the per-image,
per-channel mean and std of its input (the pre-BN layer's output) match the BN's running mean and
sqrt(running var + 1e-6); the loss of one statistic is ZeroQ's ``own_loss`` (‖A − B‖² / batch),
summed over BN layers, plus the same terms pulling the image's own per-channel statistics to mean
0, std 1. The (layer → BN) pairs come from the model's torch.fx graph rather than ZeroQ's
assumption that the k-th conv feeds the k-th BN. Results are cached on disk per model weights
(a digest of every BN's statistics), seed, count and iterations, so a sweep distils once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from reflow.biascorr import links
from reflow.data import Batch, stream_seed
from reflow.errors import ReflowError
from reflow.tensor_cache import cached_tensors

EPS = 1e-6
ITERATIONS = 500
#: Distilled sets held in this process, most recently used last.
_LOADED: OrderedDict[str, Distilled] = OrderedDict()
LOADED_KEPT = 2


@dataclass
class Distilled:
    batches: list[Batch]
    #: Seconds the distillation took (when it ran, even if read back from the cache now), and
    #: the batches' mean loss at the first and the last iteration.
    seconds: float
    loss_first: float
    loss_last: float
    cached: bool


def _own_loss(target: torch.Tensor, per_image: torch.Tensor) -> torch.Tensor:
    return (target - per_image).norm() ** 2 / per_image.shape[0]


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)
    return flat.mean(dim=2), torch.sqrt(flat.var(dim=2) + EPS)


def bn_digest(model: nn.Module) -> str:
    """What the distilled images depend on in ``model``: a digest of its BN statistics and
    weights (16 hex digits)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def distill_batch(
    model: nn.Module,
    shape: tuple[int, ...],
    batch_size: int,
    seed: int,
    iterations: int = ITERATIONS,
    progress: bool = False,
) -> tuple[torch.Tensor, list[float]]:
    """One batch of distilled images; returns the images and the loss at every iteration."""
    modules = dict(model.named_modules())
    pairs = links(model)
    if not pairs:
        raise ReflowError(
            f"distillation matches BatchNorm statistics, but {type(model).__name__} has no "
            "layer feeding a BatchNorm"
        )
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            outputs[name] = output

        return hook

    device = next(model.parameters()).device
    targets = {
        p.layer: (
            modules[p.bn].running_mean.detach().clone(),
            torch.sqrt(modules[p.bn].running_var.detach() + EPS),
        )
        for p in pairs
    }
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *shape), generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, min_lr=1e-4, patience=100)
    handles = [modules[p.layer].register_forward_hook(keep(p.layer)) for p in pairs]
    flags = {p: p.requires_grad for p in model.parameters()}
    losses = []
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for _ in tqdm(range(iterations), desc="distil", leave=False, disable=not progress):
            optimizer.zero_grad()
            model(x)
            loss = torch.zeros((), device=device)
            for layer, (mean, std) in targets.items():
                got_mean, got_std = _moments(outputs[layer])
                loss = loss + _own_loss(mean, got_mean) + _own_loss(std, got_std)
            got_mean, got_std = _moments(x)
            loss = loss + _own_loss(torch.zeros_like(got_mean[0]), got_mean)
            loss = loss + _own_loss(torch.ones_like(got_std[0]), got_std)
            loss.backward()
            optimizer.step()
            scheduler.step(loss.item())
            losses.append(loss.item())
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return x.detach().cpu(), losses


def distilled_batches(
    model: nn.Module,
    label: str,
    shape: tuple[int, ...],
    n_batches: int,
    batch_size: int,
    seed: int,
    iterations: int = ITERATIONS,
    progress: bool = False,
) -> Distilled:
    """``n_batches`` distilled batches for ``model`` (named ``label`` in the cache), from the
    disk cache when this model's statistics were distilled with these settings before."""
    name = f"distilled-{label}-{bn_digest(model)}-s{seed}-{n_batches}x{batch_size}-it{iterations}"
    if name in _LOADED:  # the rows of a sweep share one draw: read the disk cache once
        _LOADED.move_to_end(name)
        return _LOADED[name]
    built: list[float] = []

    def build() -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        images, firsts, lasts = [], [], []
        for b in range(n_batches):
            batch_seed = stream_seed(seed, f"distil:{b}")
            x, losses = distill_batch(model, shape, batch_size, batch_seed, iterations, progress)
            images.append(x)
            firsts.append(losses[0])
            lasts.append(losses[-1])
        built.append(time.perf_counter() - start)
        return {
            "images": torch.cat(images),
            "loss_first": torch.tensor(firsts),
            "loss_last": torch.tensor(lasts),
            "seconds": torch.tensor(built[0]),
        }

    tensors = cached_tensors(name, build)
    images = tensors["images"].split(batch_size)
    labels = torch.zeros(batch_size, dtype=torch.long)
    made = Distilled(
        [(x, labels[: len(x)]) for x in images],
        float(tensors["seconds"]),
        float(tensors["loss_first"].mean()),
        float(tensors["loss_last"].mean()),
        cached=not built,
    )
    _LOADED[name] = dataclasses.replace(made, cached=True)  # later rows read it, not made it
    while len(_LOADED) > LOADED_KEPT:
        _LOADED.popitem(last=False)
    return made
