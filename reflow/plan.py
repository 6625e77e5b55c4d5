"""Plan: turn experiments (a grid times settings) into tasks, skipping finished rows.

A *task* is the rows that share one mask selection: one (model set-up, method, sparsity, seed,
settings) and the repairs still to run on it. Tasks are plain frozen values, so any executor can
ship them to another process. Everything that can be checked without running a row is checked
here, against an unweighted build of each model: names, options, scopes, repairs that cannot
apply, ``--recalibrate-layers`` ranges, N:M patterns, data and checkpoint files.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from reflow import baselines
from reflow.baselines.base import Method
from reflow.data import DATASETS, check_dataset
from reflow.errors import ReflowError
from reflow.grid import Experiment, Grid
from reflow.identity import config_hash, identity
from reflow.masks import Pattern, prunable_parameters
from reflow.options import make_config
from reflow.recalibrate import select_layers
from reflow.registry import Registry
from reflow.repairs import REPAIRS, Repair
from reflow.results import KEY, row_key
from reflow.settings import Settings
from reflow.zoo import CheckpointRef, check_checkpoint, get_entry, resolve_checkpoint


@dataclass(frozen=True)
class SetupKey:
    """What a worker loads once and reuses: model weights on data, dense BN as set."""

    model: str
    #: The resolved weights (a user file carries its digest: a file changed after planning is
    #: refused when a worker loads it).
    checkpoint: CheckpointRef
    dataset: str
    dense_bn: str = "checkpoint"


@dataclass(frozen=True)
class RowSpec:
    #: The configured repair (its options applied), resolved when the plan was made.
    repair: Repair
    key: tuple
    config_hash: str


@dataclass(frozen=True)
class Task:
    setup: SetupKey
    #: The configured method (its options applied), resolved when the plan was made: a worker
    #: runs this object and never parses a name again.
    method: Method
    sparsity: float
    seed: int
    settings: Settings
    rows: tuple[RowSpec, ...]
    experiment: str = ""

    @property
    def label(self) -> str:
        return f"{self.setup.model} {self.method.name} s={self.sparsity:g} seed={self.seed}"


def configured_method(name: str, settings: Settings) -> Method:
    """Method ``name`` with the run's options for it: the one place a method name is resolved
    (built once per class and options in a process; methods keep no state between rows)."""
    return _configured(baselines.METHODS, name, _frozen(settings.options.get(name)))


def configured_repair(name: str, settings: Settings) -> Repair:
    """Repair ``name`` with the run's options for it (see `configured_method`)."""
    return _configured(REPAIRS, name, _frozen(settings.options.get(name)))


def _frozen(options: dict[str, str] | None) -> tuple:
    return tuple(sorted((options or {}).items()))


def _configured(registry: Registry, name: str, options: tuple) -> Any:
    cls = registry.get(name)
    return _build(cls, cls.Config, name, options)


@functools.cache
def _build(cls: type, config: type, name: str, options: tuple) -> Any:
    return cls(make_config(config, dict(options), owner=name))


def task_id(task: Task) -> str:
    """Stable name of a task: a digest of its row keys (claims and shard files use it)."""
    keys = json.dumps([list(spec.key) for spec in task.rows])
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def validate(
    experiments: list[Experiment], data_root: Path | None = None, device: str = "auto"
) -> None:
    """Raise on anything that would make a row fail for a reason known before it runs.

    Memory a method would need is checked against its configured limit, and against the free
    memory of this machine when ``device`` is ``cpu`` (the driver never touches a GPU)."""
    host = "cpu" if device == "cpu" else None
    for experiment in experiments:
        grid = experiment.grid
        grid.validate()
        for model, dataset in itertools.product(grid.models, grid.datasets):
            reason = get_entry(model).applies_to(DATASETS.get(dataset))
            if reason:
                raise ReflowError(reason)
        for settings in experiment.settings:
            _check_options(experiment.name, grid, settings)
            pattern = settings.parsed_pattern
            if pattern:
                _check_pattern(grid, pattern)
            for model in grid.models:
                _check_model(model, grid, settings, host)
        for dataset in grid.datasets:
            sizes = check_dataset(dataset, data_root)
            for settings in experiment.settings:
                _check_calibration(grid, settings, dataset, sizes)
        for model, checkpoint, dataset in itertools.product(
            grid.models, grid.checkpoints, grid.datasets
        ):
            check_checkpoint(model, checkpoint, dataset)


def _check_calibration(
    grid: Grid, settings: Settings, dataset: str, sizes: dict[str, int] | None
) -> None:
    """Repairs draw calib_batches × calib_batch_size distinct train images: enough must exist,
    with pixels where the source corrupts them."""
    if settings.calib_source.startswith("shifted:") and not DATASETS.get(dataset).pixel_images:
        raise ReflowError(
            f"calib_source {settings.calib_source} corrupts pixels, but {dataset} has no pixel "
            "images; use a real dataset (cifar10-jpeg) or noise"
        )
    need = settings.calib_batches * settings.calib_batch_size
    if not sizes or need <= sizes["train"]:
        return
    users = [r for r in grid.repairs if "calibration" in configured_repair(r, settings).needs]
    if users:
        raise ReflowError(
            f"calibration asks for {settings.calib_batches} × {settings.calib_batch_size} = "
            f"{need:,} images but the {dataset} train split has {sizes['train']:,} (repairs "
            f"{', '.join(users)}); lower --calib-batches or --calib-batch-size"
        )


def _check_options(name: str, grid: Grid, settings: Settings) -> None:
    for target in settings.options:
        if target in grid.methods:
            configured_method(target, settings)
        elif target in grid.repairs:
            configured_repair(target, settings)
        else:
            known = (
                "method"
                if target in baselines.METHODS
                else ("repair" if target in REPAIRS else None)
            )
            where = f"{name}: " if name != "run" else ""
            if known:
                raise ReflowError(
                    f"{where}options are set for {known} {target!r}, which this run does not "
                    f"include (methods: {', '.join(grid.methods)}; repairs: "
                    f"{', '.join(grid.repairs)})"
                )
            raise ReflowError(
                f"{where}options are set for {target!r}, which is neither a method nor a repair; "
                f"methods in this run: {', '.join(grid.methods)}; repairs: "
                f"{', '.join(grid.repairs)}"
            )


def _check_pattern(grid: Grid, pattern: Pattern) -> None:
    wrong = [s for s in grid.sparsities if abs(s - pattern.sparsity) > 1e-9]
    if wrong:
        raise ReflowError(
            f"pattern {pattern} fixes the sparsity at {pattern.sparsity:g} (1 − N/M), but "
            f"sparsity {', '.join(f'{s:g}' for s in wrong)} was asked for; drop --sparsity or "
            f"set it to {pattern.sparsity:g}"
        )
    for name in grid.methods:
        if not baselines.get_method_class(name).supports_pattern:
            raise ReflowError(
                f"method {name} does not select by per-weight scores, so an N:M pattern cannot "
                "constrain its mask; pattern-capable methods: "
                + ", ".join(
                    m
                    for m in baselines.list_methods()
                    if baselines.get_method_class(m).supports_pattern
                )
            )


@functools.cache
def unweighted(model: str) -> nn.Module:
    """The architecture without loading weights: enough for every structural check."""
    entry = get_entry(model)
    return entry.build(entry.num_classes)


def _check_model(model: str, grid: Grid, settings: Settings, host: str | None = None) -> None:
    arch = unweighted(model)
    params = prunable_parameters(arch, settings.scope)
    if not params:
        raise ReflowError(f"scope {settings.scope!r} leaves no prunable weight in {model}")
    for name in grid.repairs:
        repair = configured_repair(name, settings)
        if reason := repair.applies_to(arch):
            raise ReflowError(f"repair {name} cannot run on {model}: {reason}")
        count = repair.layer_count(arch)
        if count is not None and settings.recalibrate_layers != "all":
            try:
                select_layers(list(range(count)), settings.recalibrate_layers)
            except ReflowError as exc:
                raise ReflowError(f"{model}, repair {name}: {exc}") from None
    for name in grid.methods:
        method = configured_method(name, settings)
        if reason := method.applies_to(arch):
            raise ReflowError(f"method {name} cannot run on {model}: {reason}")
        if need := method.memory_needed(arch, settings.scope):
            try:
                need.check(host)
            except ReflowError as exc:
                raise ReflowError(f"method {name} on {model}: {exc}") from None


def row_config_hash(method: str, repair: str, settings: Settings) -> str:
    """The config hash of a (method, repair) row under ``settings``."""
    chosen, fixer = configured_method(method, settings), configured_repair(repair, settings)
    return config_hash(identity(chosen.config, fixer.config, settings))


@dataclass
class Plan:
    tasks: list[Task]
    #: Rows already in the store.
    done_before: int = 0
    #: Rows declared by more than one experiment (planned once).
    duplicates: int = 0

    @property
    def rows(self) -> int:
        return sum(len(t.rows) for t in self.tasks)


def plan(experiments: list[Experiment], finished: set[tuple]) -> Plan:
    """Tasks for every row not in ``finished``; a row declared twice is planned once."""
    result = Plan([])
    planned: set[tuple] = set()
    refs: dict[tuple, CheckpointRef] = {}
    hashes: dict[tuple, str] = {}
    for experiment in experiments:
        grid = experiment.grid
        for settings in experiment.settings:
            for model, ckpt, dataset, method, sparsity, seed in itertools.product(
                grid.models,
                grid.checkpoints,
                grid.datasets,
                grid.methods,
                grid.sparsities,
                grid.seeds,
            ):
                ref = refs.setdefault(
                    (model, ckpt, dataset), resolve_checkpoint(model, ckpt, dataset)
                )
                chosen = configured_method(method, settings)
                rows = []
                for repair in grid.repairs:
                    fixer = configured_repair(repair, settings)
                    ident = (method, repair, id(settings))  # the hash ignores sparsity and seed
                    if ident not in hashes:
                        hashes[ident] = row_config_hash(method, repair, settings)
                    digest = hashes[ident]
                    key = row_key(
                        {
                            "model": model,
                            "checkpoint": ref.key,
                            "dataset": dataset,
                            "method": method,
                            "repair": repair,
                            "sparsity": sparsity,
                            "seed": seed,
                            "config_hash": digest,
                        }
                    )
                    if key in finished:
                        result.done_before += 1
                    elif key in planned:
                        result.duplicates += 1
                    else:
                        planned.add(key)
                        rows.append(RowSpec(fixer, key, digest))
                if rows:
                    setup = SetupKey(model, ref, dataset, settings.dense_bn)
                    result.tasks.append(
                        Task(
                            setup,
                            chosen,
                            float(sparsity),
                            int(seed),
                            settings,
                            tuple(rows),
                            experiment.name,
                        )
                    )
    result.tasks = family_order(result.tasks)
    return result


def planned_rows(frame: pd.DataFrame, experiments: list[Experiment]) -> pd.DataFrame:
    """The rows of ``frame`` (any stored table: each carries its result's key) that
    ``experiments`` declare; a store shared by several runs holds other rows too."""
    keys = {spec.key for task in plan(experiments, set()).tasks for spec in task.rows}
    return frame[[row_key(row) in keys for row in frame[list(KEY)].to_dict("records")]]


def _search_key(task: Task) -> tuple | None:
    """What the tasks sharing one family search have in common (None: no family)."""
    family = task.method.selection_family
    if family is None:
        return None
    config = repr(task.method.config)
    return (family, task.setup, repr(task.settings), task.sparsity, task.seed, config)


def family_batches(tasks: list[Task]) -> list[tuple[Task, ...]]:
    """Tasks in batches that must run in one process: adjacent members of a selection family
    with the same set-up, settings, sparsity and seed share one search (`reflow.harness`), so a
    distributed executor ships them to one worker together. Other tasks are batches of one."""
    batches: list[list[Task]] = []
    for task in tasks:
        key = _search_key(task)
        if batches and key is not None and _search_key(batches[-1][-1]) == key:
            batches[-1].append(task)
        else:
            batches.append([task])
    return [tuple(b) for b in batches]


def family_order(tasks: list[Task]) -> list[Task]:
    """Tasks with the members of a selection family (chita_s and chita_u, …) side by side for
    each sparsity and seed, so the harness runs their shared search once; otherwise the order
    of the experiments is kept."""
    first: dict[tuple, int] = {}

    def group(task: Task) -> tuple:
        family = task.method.selection_family or task.method.name
        return (task.experiment, task.setup, repr(task.settings), family)

    for i, task in enumerate(tasks):
        first.setdefault(group(task), i)
    return sorted(tasks, key=lambda t: (first[group(t)], t.sparsity, t.seed, t.method.name))
