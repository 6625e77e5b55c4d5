"""Commit: the single writer. It validates and plans in the driving process, hands the tasks to
an executor, and inserts rows into the store as they arrive, one transaction per row, advancing
one progress bar. Tidy CSV exports are rewritten when the run ends (also when interrupted).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from reflow.execute import ExecEnv, load_plugins
from reflow.executors import Executor, get_executor
from reflow.plan import Experiment, plan, validate
from reflow.results import ResultStore


def run_experiments(
    experiments: list[Experiment],
    store: ResultStore,
    executor: Executor | None = None,
    env: ExecEnv | None = None,
    bar: tqdm | None = None,
    progress: bool = True,
    export: bool = True,
) -> dict[str, int]:
    """Run every row of ``experiments`` not already finished in ``store``; returns counts."""
    env = env or ExecEnv()
    load_plugins(env.plugins)
    validate(experiments, Path(env.data_root) if env.data_root else None, env.device)
    executor = executor or get_executor("serial")
    executor.check()
    todo = plan(experiments, store.finished())
    counts = {"done_before": todo.done_before, "duplicates": todo.duplicates, "ran": 0, "errors": 0}
    own_bar = bar is None
    if own_bar:
        total = sum(e.size() for e in experiments)
        bar = tqdm(total=total, desc="rows", unit="row", disable=not progress)
    bar.update(todo.done_before + todo.duplicates)
    try:
        for task, rows in executor.run(todo.tasks, env):
            bar.set_description(task.experiment or "rows")
            bar.set_postfix_str(task.label)
            for result in rows:
                store.add(result.row, result.probes, result.layers)
                counts["ran"] += 1
                counts["errors"] += result.row.get("error") is not None
                bar.update(1)
    finally:
        executor.close()
        if own_bar:
            bar.close()
        if export:
            store.export("csv")
    return counts
