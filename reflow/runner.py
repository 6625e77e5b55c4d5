"""Commit: the single writer. It validates and plans in the driving process, hands the tasks to
an executor, and inserts rows into the store as they arrive, one transaction per row, advancing
one progress bar. Tidy CSV exports are rewritten when the run ends (also when interrupted).

Several drivers may share one results folder (N shells, N GPUs, no Dask): each claims a task in
the store before computing it (`reflow.claims`), so every row is computed once.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from reflow.claims import TaskClaims, claimed_tasks
from reflow.errors import ReflowError
from reflow.execute import ExecEnv, load_plugins
from reflow.executors import Executor, get_executor
from reflow.grid import Experiment
from reflow.harness import parse_device, pick_device
from reflow.plan import plan, validate
from reflow.results import ResultStore

#: Rows one command may declare without ``--yes`` (a typo in a sweep file can declare millions).
MAX_ROWS = 100_000


def check_run(
    experiments: list[Experiment],
    env: ExecEnv,
    executor: Executor,
    yes: bool = False,
) -> None:
    """Everything that can be known before the store is opened, checked once: plugins import,
    the grid's size, names, options, data, weights, the device, and the executor's engine (an
    existing Dask scheduler is connected to here)."""
    load_plugins(env.plugins)
    total = sum(e.size() for e in experiments)
    if total > MAX_ROWS and not yes:
        raise ReflowError(
            f"this run declares {total:,} rows, over the {MAX_ROWS:,}-row limit; check the grid "
            "for a typo, or pass --yes to run it anyway"
        )
    parse_device(env.device)
    if executor.name == "serial":  # the tasks run here: the device must exist here
        pick_device(env.device)
    validate(experiments, Path(env.data_root) if env.data_root else None, env.device)
    executor.check()


def run_experiments(
    experiments: list[Experiment],
    store: ResultStore,
    executor: Executor | None = None,
    env: ExecEnv | None = None,
    bar: tqdm | None = None,
    progress: bool = True,
    export: bool = True,
    checked: bool = False,
) -> dict[str, int]:
    """Run every row of ``experiments`` not already finished in ``store``; returns counts.
    ``checked``: `check_run` has been called already (the CLI does, before opening the store)."""
    env = env or ExecEnv()
    executor = executor or get_executor("serial")
    if not checked:
        check_run(experiments, env, executor)
    todo = plan(experiments, store.finished())
    counts = {"done_before": todo.done_before, "duplicates": todo.duplicates, "ran": 0, "errors": 0}
    own_bar = bar is None
    if own_bar:
        total = sum(e.size() for e in experiments)
        bar = tqdm(total=total, desc="rows", unit="row", disable=not progress)
    bar.update(todo.done_before + todo.duplicates)
    planned = {spec.key for task in todo.tasks for spec in task.rows}
    claims = TaskClaims(store.folder)
    waiting = [0]
    try:
        tasks = claimed_tasks(todo.tasks, store, claims, waiting)
        for task, rows in executor.run(tasks, env):
            bar.set_description(task.experiment or "rows")
            held = f"; {waiting[0]} tasks held by other drivers" if waiting[0] else ""
            bar.set_postfix_str(task.label + held)
            for result in rows:
                store.add(result.row, result.probes, result.layers, result.outcomes)
                counts["ran"] += 1
                counts["errors"] += result.row.get("error") is not None
                bar.update(1)
    finally:
        claims.close()
        executor.close()
        if own_bar:
            bar.close()
        if export:
            store.export("csv")
    if others := len(planned & store.finished()) - (counts["ran"] - counts["errors"]):
        counts["by_others"] = others  # rows another driver on this folder computed
    return counts
