"""The harness: one code path from a model to a tidy result row.

    load ─► dense evaluation ─► select (method: collect/solve/update) ─► apply
          ─► repair (none | reflow | adabn | bnt) ─► evaluate + probe ─► row

Selection runs once per (method, sparsity, seed) and each repair starts from a copy of the same
pruned model, so every table is a clean factorial design and expensive selections are not
repeated. The phase functions below are also what the asv benchmarks call.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from reflow import baselines
from reflow.baselines.base import PruneContext, PruneResult
from reflow.data import ImageData, list_datasets, load_dataset
from reflow.errors import ReflowError, unknown_name
from reflow.evaluate import Evaluation, evaluate, variance_ratios
from reflow.masks import (
    SCOPES,
    apply_masks,
    check_sparsity,
    global_masks,
    hamming_distance,
    layer_densities,
    prunable_parameters,
    sparsity_of,
)
from reflow.provenance import config_hash, device_name, git_commit, peak_memory_mb
from reflow.recalibrate import apply_repair, get_repair
from reflow.results import ResultStore, row_key
from reflow.timing import PhaseTimer
from reflow.zoo import LoadedModel, checkpoint_label, get_entry, get_model

PHASES = ("select", "collect", "inverse", "solve", "update", "apply", "repair", "evaluate")


@dataclass(frozen=True)
class Settings:
    """Options shared by every row of a run; all of them go into the row's config hash."""

    scope: str = "all"
    calib_batches: int = 50
    calib_batch_size: int = 128
    recalibrate_layers: str = "all"
    eval_batch_size: int = 500
    probe_samples: int = 2000
    #: Per-method option overrides as strings, e.g. ``{"wf_u": {"num_grads": "200"}}``.
    method_options: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("calib_batches", "calib_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ReflowError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.probe_samples < 0:
            raise ReflowError(f"probe_samples must be >= 0, got {self.probe_samples}")
        if self.scope not in SCOPES:
            raise unknown_name("scope", self.scope, SCOPES)


@dataclass(frozen=True)
class Grid:
    """The factorial design of a run."""

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    repairs: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    checkpoints: tuple[str | None, ...] = (None,)

    def validate(self) -> None:
        """Raise on any bad name or value before the first row runs."""
        for seq, what in (
            (self.models, "model"),
            (self.datasets, "dataset"),
            (self.methods, "method"),
            (self.repairs, "repair"),
            (self.sparsities, "sparsity"),
        ):
            if not seq:
                raise ReflowError(f"no {what} given")
        for m in self.models:
            get_entry(m)
        for d in self.datasets:
            if d not in list_datasets():
                raise unknown_name("dataset", d, list_datasets())
        for m in self.methods:
            baselines.get_method_class(m)
        for r in self.repairs:
            get_repair(r)
        for s in self.sparsities:
            check_sparsity(s)

    def size(self) -> int:
        return math.prod(
            map(
                len,
                (
                    self.models,
                    self.checkpoints,
                    self.datasets,
                    self.methods,
                    self.repairs,
                    self.sparsities,
                    self.seeds,
                ),
            )
        )


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReflowError(
            f"device {name!r} asked for, but no CUDA device is available; use --device cpu"
        )
    return torch.device(name)


@dataclass
class Setup:
    """A loaded model and its data, with the dense model's evaluation."""

    loaded: LoadedModel
    data: ImageData
    device: torch.device
    dense: Evaluation | None = None

    @property
    def model(self) -> nn.Module:
        return self.loaded.model


def load_setup(
    model: str,
    dataset: str,
    checkpoint: str | None = None,
    device: torch.device | str = "cpu",
    data_root: Path | None = None,
    seed: int = 0,
) -> Setup:
    """Phase ``load``: the model (eval mode, channels-last on device) and its dataset."""
    device = torch.device(device)
    entry = get_entry(model)
    torch.manual_seed(seed)  # random-init weights ("none") are seeded too
    loaded = get_model(model, checkpoint, dataset)
    input_size = 32 if entry.family == "cifar" else 224
    data = load_dataset(dataset, data_root, input_size)
    if data.num_classes != entry.num_classes:
        raise ReflowError(
            f"{model} has {entry.num_classes} outputs but {dataset} has {data.num_classes} classes"
        )
    loaded.model.to(device, memory_format=torch.channels_last).eval()
    return Setup(loaded, data, device)


def evaluate_phase(
    setup: Setup, model: nn.Module, settings: Settings, progress: bool = False
) -> Evaluation:
    """Phase ``evaluate``: full test split, probes on the first ``probe_samples`` inputs."""
    return evaluate(
        model,
        setup.data.test_batches(settings.eval_batch_size),
        setup.data.num_classes,
        setup.device,
        settings.probe_samples,
        progress,
    )


def prune_context(
    setup: Setup, method: baselines.Method, seed: int, settings: Settings, timer: PhaseTimer
) -> PruneContext:
    """What the harness supplies to a method; data only when the method declares it needs it."""
    wants_data = bool(method.needs)
    sample = (
        (lambda n, bs: setup.data.train_sample(n, bs, seed, "gradients")) if wants_data else None
    )
    return PruneContext(
        generator=torch.Generator().manual_seed(seed),
        device=setup.device,
        scope=settings.scope,
        train_sample=sample,
        timer=timer,
    )


def select_phase(
    setup: Setup,
    method: baselines.Method,
    sparsity: float,
    seed: int,
    settings: Settings,
    timer: PhaseTimer,
) -> tuple[nn.Module, PruneResult]:
    """Phases ``select`` and ``apply``: a pruned copy of the dense model and its masks."""
    pruned = copy.deepcopy(setup.model)
    torch.manual_seed(seed)
    ctx = prune_context(setup, method, seed, settings, timer)
    with timer.phase("select"):
        result = method.prune(pruned, sparsity, ctx)
    with timer.phase("apply"):
        apply_masks(pruned, result.masks)
    result.info["hamming_vs_mp"] = hamming_distance(
        result.masks, magnitude_masks(setup, sparsity, settings)
    )
    return pruned, result


def magnitude_masks(setup: Setup, sparsity: float, settings: Settings) -> dict:
    """Global magnitude masks of the dense model: the reference every mask is compared with."""
    params = prunable_parameters(setup.model, settings.scope)
    return global_masks({n: p.detach().abs() for n, p in params.items()}, sparsity)


def calibration_batches(setup: Setup, seed: int, settings: Settings) -> Iterable:
    return setup.data.train_sample(
        settings.calib_batches, settings.calib_batch_size, seed, "calibration"
    )


def repair_phase(
    setup: Setup,
    model: nn.Module,
    repair: str,
    seed: int,
    settings: Settings,
    progress: bool = False,
) -> int:
    """Phase ``repair``: recalibrate BN in place; returns calibration samples used."""
    batches = calibration_batches(setup, seed, settings) if get_repair(repair) else ()
    return apply_repair(repair, model, batches, settings.recalibrate_layers, progress)


def row_config(method: baselines.Method, settings: Settings) -> dict[str, Any]:
    """The config stored with a row: everything that could change its numbers."""
    config = {k: v for k, v in asdict(settings).items() if k != "method_options"}
    return {**config, "method_config": asdict(method.config)}


def run_grid(
    grid: Grid,
    store: ResultStore,
    settings: Settings = Settings(),
    device: torch.device | str = "cpu",
    data_root: Path | None = None,
    progress: bool = True,
    bar: tqdm | None = None,
) -> dict[str, int]:
    """Run every row of ``grid`` not already finished in ``store``; returns counts.

    ``bar`` is an outer progress bar to advance (a sweep's), instead of one of its own.
    """
    grid.validate()
    device = torch.device(device)
    methods = {m: baselines.get_method(m, settings.method_options.get(m)) for m in grid.methods}
    finished = store.finished()
    counts = {"done_before": 0, "ran": 0, "errors": 0}
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=grid.size(), desc="rows", unit="row", disable=not progress)
    for model_name, ckpt, dataset in itertools.product(
        grid.models, grid.checkpoints, grid.datasets
    ):
        setup: Setup | None = None
        for method_name, sparsity, seed in itertools.product(
            grid.methods, grid.sparsities, grid.seeds
        ):
            method = methods[method_name]
            config = row_config(method, settings)
            base = {
                "model": model_name,
                "dataset": dataset,
                "method": method_name,
                "sparsity": float(sparsity),
                "seed": int(seed),
                "config_hash": config_hash(config),
            }
            label = checkpoint_label(model_name, ckpt, dataset)
            keyed = [{**base, "checkpoint": label, "repair": r} for r in grid.repairs]
            pending = [k for k in keyed if row_key(k) not in finished]
            counts["done_before"] += len(keyed) - len(pending)
            bar.update(len(keyed) - len(pending))
            if not pending:
                continue
            if setup is None:
                setup = load_setup(model_name, dataset, ckpt, device, data_root)
                setup.dense = evaluate_phase(setup, setup.model, settings, progress)
            bar.set_postfix_str(f"{model_name} {method_name} s={sparsity} seed={seed}")
            for row, probes, layers in _run_group(
                setup, method, pending, config, settings, progress
            ):
                store.add(row, probes, layers)
                counts["ran"] += 1
                counts["errors"] += row["error"] is not None
                bar.update(1)
    if own_bar:
        bar.close()
    return counts


def _run_group(
    setup: Setup,
    method: baselines.Method,
    keys: list[dict],
    config: dict,
    settings: Settings,
    progress: bool,
) -> Iterable[tuple[dict, list[dict], list[dict]]]:
    """Select once, then repair and evaluate a copy per repair; errors become row values."""
    first = keys[0]
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    timer = PhaseTimer(setup.device)
    try:
        pruned, result = select_phase(
            setup, method, first["sparsity"], first["seed"], settings, timer
        )
    except Exception as exc:
        for key in keys:
            yield _error_row(setup, key, config, exc), [], []
        return
    select_seconds = dict(timer.seconds)
    for key in keys:
        timer.seconds = dict(select_seconds)
        try:
            model = copy.deepcopy(pruned)
            with timer.phase("repair"):
                calib = repair_phase(setup, model, key["repair"], key["seed"], settings, progress)
            with timer.phase("evaluate"):
                ev = evaluate_phase(setup, model, settings, progress)
        except Exception as exc:
            yield _error_row(setup, key, config, exc), [], []
            continue
        yield (
            _result_row(setup, key, config, result, ev, calib, timer),
            _probe_rows(setup, key, ev),
            _layer_rows(key, result),
        )


def _provenance(setup: Setup, key: dict, config: dict) -> dict:
    return {
        **key,
        "run_id": config_hash({"key": list(row_key(key))}),
        "scope": config["scope"],
        "device": device_name(setup.device),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "config": json.dumps(config, sort_keys=True),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _result_row(
    setup: Setup,
    key: dict,
    config: dict,
    result: PruneResult,
    ev: Evaluation,
    calib_samples: int,
    timer: PhaseTimer,
) -> dict:
    report = sparsity_of(result.masks)
    densities = layer_densities(result.masks)
    dense = setup.dense
    row = _provenance(setup, key, config) | {
        "sparsity_achieved": report.sparsity,
        "prunable_params": report.total,
        "min_layer_density": min(densities.values()),
        "layers_emptied": sum(d == 0.0 for d in densities.values()),
        "top1": ev.top1,
        "top5": ev.top5,
        "loss": ev.loss,
        "dense_top1": dense.top1,
        "dense_top5": dense.top5,
        "recorded_dense_top1": setup.loaded.recorded_top1,
        "top_class_share": ev.top_class_share,
        "predictions": json.dumps(ev.predictions),
        "dense_predictions": json.dumps(dense.predictions),
        "calib_samples": calib_samples,
        "grad_samples": int(result.info.get("grad_samples", 0)),
        "eval_samples": ev.samples,
        "peak_mem_mb": peak_memory_mb(setup.device),
        "error": None,
    }
    row |= {f"t_{phase}": timer.seconds.get(phase) for phase in PHASES}
    row["hamming_vs_mp"] = result.info["hamming_vs_mp"]
    row |= {
        f"info_{k}": v for k, v in result.info.items() if k not in {"grad_samples", "hamming_vs_mp"}
    }
    return row


def _error_row(setup: Setup, key: dict, config: dict, exc: BaseException) -> dict:
    message = f"{type(exc).__name__}: {exc}".strip()
    tqdm.write(f"error in {key['method']}+{key['repair']} s={key['sparsity']}: {message}")
    if not isinstance(exc, ReflowError | torch.cuda.OutOfMemoryError):
        tqdm.write("".join(traceback.format_exception(exc)))
    return _provenance(setup, key, config) | {"error": message}


def _probe_rows(setup: Setup, key: dict, ev: Evaluation) -> list[dict]:
    ratios = variance_ratios(ev, setup.dense) if ev.bn_variance else {}
    return [
        {
            **key,
            "layer": name,
            "bn_index": i,
            "var_dense": setup.dense.bn_variance[name],
            "var_pruned": ev.bn_variance[name],
            "ratio": ratio,
        }
        for i, (name, ratio) in enumerate(ratios.items())
    ]


def _layer_rows(key: dict, result: PruneResult) -> list[dict]:
    return [
        {
            **key,
            "layer": name,
            "layer_index": i,
            "params": int(result.masks[name].numel()),
            "density": density,
        }
        for i, (name, density) in enumerate(layer_densities(result.masks).items())
    ]
