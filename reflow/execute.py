"""Execute: run one task in whatever process an executor chose, and return plain rows.

A worker process keeps its model/data set-ups (and their dense evaluations) in a cache, so a
sweep loads each model and evaluates the dense network once per process, not once per settings
combination. Rows come back as dicts of plain values (no tensors); any exception in a phase,
out-of-memory included, becomes an ``error`` value in the rows it affects.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import sys
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from reflow.baselines.base import PruneResult
from reflow.errors import ReflowError
from reflow.evaluate import Evaluation, variance_ratios
from reflow.harness import (
    Setup,
    calibration_key,
    dense_evaluation,
    evaluate_phase,
    load_setup,
    outcome_columns,
    pick_device,
    repair_phase,
    select_phase,
)
from reflow.identity import full_config, run_id
from reflow.masks import Masks, layer_densities
from reflow.norms import norm_layers
from reflow.outcomes import Outcomes, order_identity
from reflow.plan import RowSpec, SetupKey, Task
from reflow.provenance import device_name, git_commit, gpu_settings
from reflow.results import KEY
from reflow.seeds import seed_controls
from reflow.timing import PhaseTimer


@dataclass(frozen=True)
class ExecEnv:
    """Where and how tasks run; plain values, so it travels to worker processes."""

    device: str = "auto"
    data_root: str | None = None
    progress: bool = False
    #: Modules imported before running (custom methods or repairs registering themselves).
    plugins: tuple[str, ...] = ()


class SetupFailed(ReflowError):
    """Loading a model or its data failed for a reason every task of the set-up shares (a corrupt
    image, a broken checkpoint): the run stops with one line instead of storing an error row per
    task and decoding the data again for each."""


@dataclass
class RowResult:
    row: dict
    probes: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    #: Every evaluated example's predicted class and label (None: nothing was evaluated).
    outcomes: Outcomes | None = None


#: This process's set-ups, most recently used last; a few are kept (a model with its dense
#: evaluations; the decoded datasets are shared between set-ups by `reflow.harness`).
_SETUPS: OrderedDict[tuple, Setup] = OrderedDict()
SETUPS_KEPT = 4


def load_plugins(plugins: tuple[str, ...]) -> None:
    """Import each ``--plugin`` module (it registers its methods or repairs), once a process:
    in the driver before planning, and in a worker before its first task."""
    for name in plugins:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ReflowError(
                f"--plugin {name}: cannot import it ({type(exc).__name__}: {exc}); the module "
                "must be importable here and in every worker (check PYTHONPATH)"
            ) from None


def cached_setup(key: SetupKey, env: ExecEnv) -> Setup:
    """This process's set-up for ``key`` (loaded on first use)."""
    cache_key = (key, env.device, env.data_root)
    if cache_key not in _SETUPS:
        device = pick_device(env.device)
        root = Path(env.data_root) if env.data_root else None
        setup = load_setup(
            key.model, key.dataset, key.checkpoint, device, root, dense_bn=key.dense_bn
        )
        if device.type == "cuda":
            warm_up(setup)
        _SETUPS[cache_key] = setup
        while len(_SETUPS) > SETUPS_KEPT:
            _SETUPS.popitem(last=False)
    _SETUPS.move_to_end(cache_key)
    return _SETUPS[cache_key]


@torch.no_grad()
def warm_up(setup: Setup) -> None:
    """One forward pass before anything is timed (CUDA context, cuDNN algorithm choice)."""
    x, _ = next(iter(setup.data.test_batches(32)))
    setup.model(x.to(setup.device))
    torch.cuda.synchronize(setup.device)


def execute(
    task: Task,
    env: ExecEnv,
    keep: Callable[[nn.Module, Masks], None] | None = None,
    evaluate: bool = True,
) -> list[RowResult]:
    """All rows of ``task``: select once, then repair and evaluate a copy per repair.

    ``keep(model, masks)`` receives each repaired model (`reflow prune` saves it); without
    ``evaluate`` the rows carry no accuracy (the evaluation phase is skipped)."""
    load_plugins(env.plugins)
    try:
        setup = cached_setup(task.setup, env)
        dense = dense_evaluation(setup, task.settings, env.progress) if evaluate else None
    except ReflowError as exc:  # bad data or weights: every task would fail the same way
        raise SetupFailed(f"{task.setup.model} on {task.setup.dataset}: {exc}") from None
    method = task.method
    copies = {
        spec.key: _seed_copy(task, spec) if keep is None and evaluate else None
        for spec in task.rows
    }
    if all(copies.values()):  # nothing here depends on the seed: every row computed before
        return [_copied(task, spec, setup, copies[spec.key]) for spec in task.rows]
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    timer = PhaseTimer(setup.device)
    try:
        pruned, result = select_phase(setup, method, task.sparsity, task.seed, task.settings, timer)
    except Exception as exc:
        _free_cuda(setup)
        return [RowResult(_error_row(task, spec, setup, exc)) for spec in task.rows]
    select_seconds = dict(timer.seconds)
    rows = []
    for spec in task.rows:
        if copies[spec.key]:
            rows.append(_copied(task, spec, setup, copies[spec.key]))
            continue
        timer.seconds = dict(select_seconds)
        repair = spec.repair
        try:
            model = copy.deepcopy(pruned)
            with timer.phase("repair"):
                calib = repair_phase(setup, model, repair, task.seed, task.settings, env.progress)
            ev = None
            if dense is not None:
                with timer.phase("evaluate"):
                    ev = evaluate_phase(setup, model, task.settings, env.progress)
        except Exception as exc:
            _free_cuda(setup)
            rows.append(RowResult(_error_row(task, spec, setup, exc)))
            continue
        row = _result_row(task, spec, setup, result, ev, dense, calib, timer)
        row |= _structure_columns(setup, model, result)
        probes = _probe_rows(ev, dense, model) if ev is not None and dense is not None else []
        rows.append(RowResult(row, probes, _layer_rows(result), _outcomes(setup, ev)))
        _remember_seed_free(task, spec, rows[-1])
        if keep is not None:
            keep(model, result.masks)
    return rows


#: Rows whose seed controls nothing, by their key without the seed (`reflow.seeds`): computed
#: once per process and recorded for every other seed as a copy (``seed_copy_of``).
_SEED_FREE: OrderedDict[tuple, RowResult] = OrderedDict()
SEED_FREE_KEPT = 512


def _seed_free_key(task: Task, spec: RowSpec) -> tuple | None:
    if seed_controls(task.method, spec.repair, task.settings) != "nothing":
        return None
    seed_at = KEY.index("seed")
    return (task.setup, task.experiment, *spec.key[:seed_at], *spec.key[seed_at + 1 :])


def _seed_copy(task: Task, spec: RowSpec) -> RowResult | None:
    key = _seed_free_key(task, spec)
    return _SEED_FREE.get(key) if key is not None else None


def _remember_seed_free(task: Task, spec: RowSpec, result: RowResult) -> None:
    key = _seed_free_key(task, spec)
    if key is None or result.row.get("error") is not None or result.outcomes is None:
        return
    _SEED_FREE[key] = result
    while len(_SEED_FREE) > SEED_FREE_KEPT:
        _SEED_FREE.popitem(last=False)


def _copied(task: Task, spec: RowSpec, setup: Setup, source: RowResult) -> RowResult:
    """``source``'s measurements recorded for this row's seed, saying whose they are."""
    row = source.row | _provenance(task, spec, setup) | {"seed_copy_of": source.row["seed"]}
    return RowResult(row, source.probes, source.layers, source.outcomes)


def _outcomes(setup: Setup, ev: Evaluation | None) -> Outcomes | None:
    if ev is None:
        return None
    order = order_identity(setup.data.name, setup.data.test_order()[: ev.samples])
    return Outcomes.of(order, ev.labels, ev.predicted)


def _free_cuda(setup: Setup | None) -> None:
    if setup is not None and setup.device.type == "cuda":
        torch.cuda.empty_cache()


def _key(task: Task, spec: RowSpec) -> dict:
    return dict(zip(KEY, spec.key, strict=True))


def _provenance(task: Task, spec: RowSpec, setup: Setup | None) -> dict:
    config = full_config(task.method.config, spec.repair.config, task.settings)
    ref = task.setup.checkpoint
    return {
        **_key(task, spec),
        "run_id": run_id(spec.key),
        "checkpoint_label": ref.label,
        "checkpoint_sha256": ref.sha256,
        "experiment": task.experiment,
        "scope": task.settings.scope,
        "pattern": task.settings.pattern or None,
        "dense_bn": task.settings.dense_bn,
        "device": device_name(setup.device) if setup else "not loaded",
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "worker": f"{os.uname().nodename}:{os.getpid()}",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": torch.get_num_threads(),
        **gpu_settings(),
        "config": json.dumps(config, sort_keys=True),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _result_row(
    task: Task,
    spec: RowSpec,
    setup: Setup,
    result: PruneResult,
    ev: Evaluation | None,
    dense: Evaluation | None,
    calib_samples: int,
    timer: PhaseTimer,
) -> dict:
    outcome = outcome_columns(setup, result, ev, dense, calib_samples, timer.seconds)
    seed = {"seed_controls": seed_controls(task.method, spec.repair, task.settings)}
    key = calibration_key(task.seed, task.settings)
    facts = setup.calibration_facts.get(key, {}) if calib_samples else {}
    return (
        _provenance(task, spec, setup)
        | outcome
        | facts
        | seed
        | {"seed_copy_of": None, "error": None}
    )


def _structure_columns(setup: Setup, model: torch.nn.Module, result: PruneResult) -> dict:
    """Parameters, multiply-accumulates and latency of physically smaller (structured) models."""
    if result.model is None:
        return {}
    from reflow.structure import structure_report

    return structure_report(setup.model, model, setup.data, setup.device)


def _error_row(task: Task, spec: RowSpec, setup: Setup | None, exc: BaseException) -> dict:
    message = f"{type(exc).__name__}: {exc}".strip()
    tqdm.write(f"error in {task.method.name}+{spec.repair.name} s={task.sparsity}: {message}")
    if not isinstance(exc, ReflowError | torch.cuda.OutOfMemoryError):
        tqdm.write("".join(traceback.format_exception(exc)))
    return _provenance(task, spec, setup) | {"error": message}


def _probe_rows(ev: Evaluation, dense: Evaluation, model: torch.nn.Module) -> list[dict]:
    if not ev.norm_variance:
        return []
    kinds = {n: type(m).__name__ for n, m in norm_layers(model).items()}
    return [
        {
            "layer": name,
            "norm_index": i,
            "norm_type": kinds.get(name),
            "var_dense": dense.norm_variance[name],
            "var_pruned": ev.norm_variance[name],
            "ratio": ratio,
        }
        for i, (name, ratio) in enumerate(variance_ratios(ev, dense).items())
    ]


def _layer_rows(result: PruneResult) -> list[dict]:
    return [
        {
            "layer": name,
            "layer_index": i,
            "params": int(result.masks[name].numel()),
            "density": density,
            **result.layer_info.get(name, {}),
        }
        for i, (name, density) in enumerate(layer_densities(result.masks).items())
    ]
