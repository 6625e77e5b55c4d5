"""The harness phases: one code path from a model to a result row.

    load ─► dense evaluation ─► select (method: collect/solve/update) ─► apply
          ─► repair (any registered repair) ─► evaluate + probe

Selection runs once per (method, sparsity, seed) and each repair starts from a copy of the same
pruned model, so every table is a clean factorial design and expensive selections are not
repeated. The phase functions below are what `reflow.execute` runs for each task (for `reflow run`,
`reflow sweep` and `reflow prune` alike) and what the asv benchmarks call; nothing here imports
the planning or running modules above it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reflow import baselines, calib_sources, paths
from reflow.baselines.base import PruneContext, PruneResult
from reflow.data import DATASETS, Batch, ImageData, augment, load_dataset, stream_seed
from reflow.distill import ITERATIONS, distilled_batches
from reflow.errors import ReflowError
from reflow.evaluate import Evaluation, evaluate
from reflow.masks import (
    apply_masks,
    hamming_distance,
    layer_densities,
    prunable_parameters,
    sparsity_of,
)
from reflow.memory import PeakRss
from reflow.provenance import peak_memory_mb
from reflow.recalibrate import recalibrate_bn
from reflow.repairs import Repair, RepairContext, get_repair
from reflow.settings import Settings
from reflow.timing import PhaseTimer
from reflow.zoo import CheckpointRef, LoadedModel, get_entry, get_model

PHASES = ("select", "collect", "inverse", "solve", "update", "apply", "repair", "evaluate")

__all__ = ["PHASES", "Settings", "Setup", "load_setup"]


def pick_device(name: str = "auto") -> torch.device:
    """The device ``name`` means on this machine; a one-line error if it has no such device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ReflowError(
                f"device {name!r} asked for, but no CUDA device is available; use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ReflowError(
                f"device {name!r} asked for, but this machine has {count} CUDA device(s) "
                f"(cuda:0 … cuda:{count - 1})"
            )
    return device


def parse_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or another torch device string, checked."""
    if name == "auto":
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ReflowError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in {"cpu", "cuda", "mps", "xpu"}:
        raise ReflowError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


@dataclass
class Setup:
    """A loaded model and its data, with the dense model's evaluations (per eval setting)."""

    loaded: LoadedModel
    data: ImageData
    device: torch.device
    dense_evaluations: dict[tuple[int, ...], Evaluation] = field(default_factory=dict)
    #: Recent family searches (see `shared_search`), most recent last.
    searches: OrderedDict[tuple, Search] = field(default_factory=OrderedDict)
    #: Shape of one input (C, H, W) when no zoo entry gives it (`reflow.prune` on any module).
    shape: tuple[int, ...] | None = None
    #: Facts of generated calibration images (distillation time and loss), by
    #: `calibration_key`, for the rows that used them.
    calibration_facts: dict[tuple, dict] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.shape is not None:
            return self.shape
        size = self.loaded.entry.input_size
        return (3, size, size)


def load_setup(
    model: str,
    dataset: str,
    checkpoint: str | CheckpointRef | None = None,
    device: torch.device | str = "cpu",
    data_root: Path | None = None,
    seed: int = 0,
    dense_bn: str = "checkpoint",
) -> Setup:
    """Phase ``load``: the model (eval mode, channels-last on device) and its dataset."""
    device = torch.device(device)
    entry = get_entry(model)
    torch.manual_seed(seed)  # random-init weights ("none") are seeded too
    loaded = get_model(model, checkpoint, dataset)
    data = shared_dataset(dataset, Path(data_root or paths.data_root()), entry.input_size)
    if data.num_classes != entry.num_classes:
        raise ReflowError(
            f"{model} has {entry.num_classes} outputs but {dataset} has {data.num_classes} classes"
        )
    loaded.model.to(device, memory_format=torch.channels_last).eval()
    setup = Setup(loaded, data, device)
    if dense_bn == "train":
        reestimate_dense_bn(setup)
    return setup


@functools.lru_cache(maxsize=4)
def shared_dataset(name: str, root: Path | None, input_size: int) -> ImageData:
    """One loaded copy of a dataset per process, shared by every set-up that uses it."""
    return load_dataset(name, root, input_size)


def reestimate_dense_bn(setup: Setup, batch_size: int = 128) -> int:
    """What CHITA's and M-FAC's ResNet-20 scripts do before pruning: one train-mode pass over
    the whole (shuffled) train split, momentum 0.1, statistics not reset."""
    order = torch.randperm(len(setup.data.train), generator=torch.Generator().manual_seed(0))
    batches = setup.data.train.batches(order, batch_size)
    return recalibrate_bn(setup.model, batches, reset=False, momentum=0.1, device=setup.device)


def dense_evaluation(setup: Setup, settings: Settings, progress: bool = False) -> Evaluation:
    """The dense model's evaluation under ``settings`` (computed once per setup)."""
    key = (settings.eval_batch_size, settings.probe_samples, settings.eval_samples)
    if key not in setup.dense_evaluations:
        setup.dense_evaluations[key] = evaluate_phase(setup, setup.model, settings, progress)
    return setup.dense_evaluations[key]


def evaluate_phase(
    setup: Setup, model: nn.Module, settings: Settings, progress: bool = False
) -> Evaluation:
    """Phase ``evaluate``: the test split (or its first ``eval_samples`` images of the fixed
    class-mixed order), probes on the first ``probe_samples`` inputs."""
    batches = setup.data.test_batches(settings.eval_batch_size)
    if settings.eval_samples:
        batches = first_samples(batches, settings.eval_samples)
    return evaluate(
        model,
        batches,
        setup.data.num_classes,
        setup.device,
        settings.probe_samples,
        progress,
    )


def first_samples(batches: Iterable[Batch], count: int) -> Iterator[Batch]:
    """The first ``count`` samples of ``batches`` (the last batch cut to fit)."""
    left = count
    for x, y in batches:
        if left <= 0:
            return
        yield x[:left], y[:left]
        left -= len(x)


def _sampler(setup: Setup, seed: int, stream: str) -> Callable[[int, int], list[Batch]]:
    return lambda n, bs: setup.data.train_sample(n, bs, seed, stream)


def prune_context(
    setup: Setup, method: baselines.Method, seed: int, settings: Settings, timer: PhaseTimer
) -> PruneContext:
    """What the harness supplies to a method; data only when the method declares it needs it.

    Gradients and activations come from seeded streams of their own, independent of each other
    and of the calibration images repairs use.
    """
    needs = method.needs
    return PruneContext(
        generator=torch.Generator().manual_seed(seed),
        device=setup.device,
        scope=settings.scope,
        train_sample=_sampler(setup, seed, "gradients") if "train_data" in needs else None,
        activation_sample=(
            _sampler(setup, seed, "activations") if "activations" in needs else None
        ),
        pattern=settings.parsed_pattern,
        input_shape=setup.input_shape,
        timer=timer,
    )


@dataclass
class Search:
    """A family's search result: masks, the searcher's weights after it, facts, phase seconds."""

    masks: dict
    weights: dict
    info: dict
    seconds: dict[str, float]
    layer_info: dict = field(default_factory=dict)
    memory_mb: float = 0.0


#: Family searches kept per set-up (each holds masks and the updated prunable weights).
SEARCHES_KEPT = 16


class SelectionMemory:
    """Memory a selection adds: resident memory on a CPU (sampled), allocated memory on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss = PeakRss()
        self.added_mb = 0.0

    def __enter__(self) -> SelectionMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.rss.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            self.added_mb = (peak - self.start) / 2**20
        else:
            self.rss.__exit__(*exc)
            self.added_mb = self.rss.added_mb


def family_searcher(method: baselines.Method) -> baselines.Method | None:
    """The member of ``method``'s family that runs the search (the one that updates weights),
    configured like ``method``; None when the method has no family."""
    family = method.selection_family
    if family is None:
        return None
    for name in baselines.list_methods():
        cls = baselines.get_method_class(name)
        if cls.selection_family == family and cls.updates_weights:
            if cls.Config is not type(method.config):
                return None
            return cls(method.config)
    return None


def shared_search(
    setup: Setup,
    method: baselines.Method,
    sparsity: float,
    seed: int,
    settings: Settings,
) -> Search | None:
    """The family search for this row, run once and kept for the other member."""
    searcher = family_searcher(method)
    if searcher is None:
        return None
    key = (
        method.selection_family,
        repr(searcher.config),
        float(sparsity),
        int(seed),
        settings.scope,
        settings.pattern,
    )
    if key in setup.searches:
        setup.searches.move_to_end(key)
        return setup.searches[key]
    work = copy.deepcopy(setup.model)
    timer = PhaseTimer(setup.device)
    torch.manual_seed(seed)
    ctx = prune_context(setup, searcher, seed, settings, timer)
    with timer.phase("select"), SelectionMemory(setup.device) as memory:
        result = searcher.prune(work, sparsity, ctx)
    params = prunable_parameters(work, settings.scope)
    search = Search(
        result.masks,
        {n: p.detach().clone() for n, p in params.items()},
        result.info,
        dict(timer.seconds),
        result.layer_info,
        memory.added_mb,
    )
    setup.searches[key] = search
    while len(setup.searches) > SEARCHES_KEPT:
        setup.searches.popitem(last=False)
    return search


def select_phase(
    setup: Setup,
    method: baselines.Method,
    sparsity: float,
    seed: int,
    settings: Settings,
    timer: PhaseTimer,
) -> tuple[nn.Module, PruneResult]:
    """Phases ``select`` and ``apply``: a pruned copy of the dense model and its masks.

    Members of a selection family share one search; the row then carries the search's measured
    phase times (without the update for a selection-only member) and ``selection_shared``.
    """
    pruned = copy.deepcopy(setup.model)
    search = shared_search(setup, method, sparsity, seed, settings)
    if search is not None:
        seconds = dict(search.seconds)
        if not method.updates_weights:
            seconds["select"] -= seconds.pop("update", 0.0)
        timer.seconds.update(seconds)
        if method.updates_weights:
            params = prunable_parameters(pruned, settings.scope)
            with torch.no_grad():
                for name, value in search.weights.items():
                    params[name].copy_(value)
        result = method.adopt_search(
            PruneResult(dict(search.masks), dict(search.info), layer_info=search.layer_info)
        )
        result.info["selection_shared"] = 1
        result.info["select_mem_mb"] = search.memory_mb
    else:
        torch.manual_seed(seed)
        ctx = prune_context(setup, method, seed, settings, timer)
        with timer.phase("select"), SelectionMemory(setup.device) as memory:
            result = method.prune(pruned, sparsity, ctx)
        result.info["select_mem_mb"] = memory.added_mb
    if result.model is not None:  # a structured method built a smaller network
        pruned = result.model.to(setup.device, memory_format=torch.channels_last).eval()
    else:
        with timer.phase("apply"):
            apply_masks(pruned, result.masks)
    result.info["hamming_vs_mp"] = hamming_distance(
        result.masks, magnitude_masks(setup, sparsity, settings)
    )
    return pruned, result


def magnitude_masks(setup: Setup, sparsity: float, settings: Settings) -> dict:
    """Global magnitude masks of the dense model (N:M when a pattern is set): the reference
    every mask is compared with."""
    params = prunable_parameters(setup.model, settings.scope)
    scores = {n: p.detach().abs() for n, p in params.items()}
    ctx = PruneContext(torch.Generator(), setup.device, pattern=settings.parsed_pattern)
    return ctx.select(scores, sparsity)  # N:M with a pattern, else global magnitude


def calibration_batches(setup: Setup, seed: int, settings: Settings) -> list[Batch]:
    """The repairs' calibration images: from ``settings.calib_source`` (`reflow.calib_sources`),
    seeded."""
    source = settings.calib_source
    if source.startswith("distilled"):
        iterations = int(source.partition(":")[2] or ITERATIONS)
        entry = setup.loaded.entry
        made = distilled_batches(
            setup.model,
            entry.name if entry is not None else type(setup.model).__name__,
            setup.input_shape,
            settings.calib_batches,
            settings.calib_batch_size,
            stream_seed(seed, "distil"),
            iterations,
        )
        setup.calibration_facts[calibration_key(seed, settings)] = {
            "calib_distil_seconds": made.seconds,
            "calib_distil_loss_first": made.loss_first,
            "calib_distil_loss_last": made.loss_last,
            "calib_distil_cached": made.cached,
        }
        return made.batches
    if source == "noise":
        return calib_sources.noise(
            settings.calib_batches,
            settings.calib_batch_size,
            setup.input_shape,
            stream_seed(seed, "calibration-noise"),
        )
    batches = setup.data.train_sample(
        settings.calib_batches, settings.calib_batch_size, seed, "calibration"
    )
    if settings.calib_augment:
        batches = augment(batches, seed)
    if source.startswith("shifted:"):
        entry = DATASETS.get(setup.data.name)
        seed = stream_seed(seed, "corruption")
        batches = calib_sources.shifted(batches, source, entry.mean, entry.std, seed)
    return batches


def calibration_key(seed: int, settings: Settings) -> tuple:
    return (seed, settings.calib_source, settings.calib_batches, settings.calib_batch_size)


def repair_phase(
    setup: Setup,
    model: nn.Module,
    repair: Repair | str,
    seed: int,
    settings: Settings,
    progress: bool = False,
) -> int:
    """Phase ``repair``: run a registered repair in place; returns calibration samples used."""
    if isinstance(repair, str):
        repair = get_repair(repair, settings.options.get(repair))
    ctx = RepairContext(
        calibration=(
            (lambda: calibration_batches(setup, seed, settings))
            if "calibration" in repair.needs
            else None
        ),
        dense_model=setup.model if "dense_model" in repair.needs else None,
        layers=settings.recalibrate_layers,
        progress=progress,
    )
    return repair.repair(model, ctx)


def outcome_columns(
    setup: Setup,
    result: PruneResult,
    ev: Evaluation | None,
    dense: Evaluation | None,
    calib_samples: int,
    seconds: dict[str, float],
) -> dict:
    """What the phases measured, as result-row columns: every stored row, `reflow prune`'s card
    and `reflow.prune`'s report carry these same columns (accuracy ones are None when nothing
    was evaluated)."""
    report = sparsity_of(result.masks)
    densities = layer_densities(result.masks)
    info = dict(result.info)
    row = {
        "sparsity_achieved": report.sparsity,
        "prunable_params": report.total,
        "structured": result.model is not None,
        "min_layer_density": min(densities.values()),
        "layers_emptied": sum(d == 0.0 for d in densities.values()),
        "top1": ev.top1 if ev else None,
        "top5": ev.top5 if ev else None,
        "loss": ev.loss if ev else None,
        "dense_top1": dense.top1 if dense else None,
        "dense_top5": dense.top5 if dense else None,
        "recorded_dense_top1": setup.loaded.recorded_top1,
        "top_class_share": ev.top_class_share if ev else None,
        "predictions": json.dumps(ev.predictions) if ev else None,
        "dense_predictions": json.dumps(dense.predictions) if dense else None,
        "calib_samples": calib_samples,
        "grad_samples": int(info.pop("grad_samples", 0)),
        "activation_samples": int(info.pop("activation_samples", 0)),
        "select_mem_mb": info.pop("select_mem_mb", None),
        "eval_samples": ev.samples if ev else 0,
        "peak_mem_mb": peak_memory_mb(setup.device),
    }
    row |= {f"t_{phase}": seconds.get(phase) for phase in PHASES}
    row["hamming_vs_mp"] = info.pop("hamming_vs_mp", None)
    row |= {f"info_{k}": v for k, v in info.items()}
    return row
