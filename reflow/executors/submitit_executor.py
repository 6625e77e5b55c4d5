"""SLURM job arrays through submitit, for clusters where a long-lived driver is not possible.

Each array task runs one reflow task and writes its rows to a shard file atomically, returning at
once if the shard already exists (so preemption and requeue are safe). The driver, while it
waits, folds each finished shard into the database; with ``wait=false`` it submits and returns,
and ``reflow merge DIR`` folds the shards later (deduplicating by row key). ``cluster=local``
runs the jobs as local processes (what the tests use) and ``debug`` in this process. The members
of a selection family go to one array task (one shard each), so their shared search runs once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflow.errors import ReflowError
from reflow.execute import ExecEnv, RowResult, execute
from reflow.executors.base import Executor, crash_rows, register, torch_threads
from reflow.executors.shards import read_shard, shard_name, write_shard
from reflow.options import check, option
from reflow.plan import Task, family_batches

CLUSTERS = ("slurm", "local", "debug")


@dataclass(frozen=True)
class SubmititConfig:
    folder: str = option("", "job and shard folder (default: OUT/submitit)")
    cluster: str = option(
        "slurm", "slurm, local (processes here) or debug (in this process)", choices=CLUSTERS
    )
    partition: str = option("", "SLURM partition")
    timeout_min: int = option(60, "time limit of each array task (minutes)", minimum=1)
    gpus: int = option(0, "GPUs per array task")
    threads: int = option(2, "CPUs per array task (torch threads)", minimum=1)
    array_parallelism: int = option(64, "array tasks running at once")
    wait: bool = option(True, "wait and merge here; false: submit and return (`reflow merge`)")
    poll_seconds: float = option(5.0, "how often the driver looks for finished jobs")

    def __post_init__(self) -> None:
        check(self)


def run_shard(batch: tuple[Task, ...], env: ExecEnv, shards: list[str], threads: int) -> str:
    """One array task: each task's rows into its shard, unless an earlier attempt wrote it."""
    done = 0
    with torch_threads(threads):
        for task, shard in zip(batch, shards, strict=True):
            path = Path(shard)
            if not path.is_file():
                write_shard(path, execute(task, env))
                done += 1
    return f"{done} of {len(batch)} tasks run"


@register
class SubmititExecutor(Executor):
    name = "submitit"
    summary = "SLURM job arrays via submitit; rows as shard files (`reflow merge`)"
    Config = SubmititConfig
    requires = ("submitit",)
    extra = "slurm"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if not self.config.folder:
            raise ReflowError("the submitit executor needs a folder (reflow sets OUT/submitit)")
        self.folder = Path(self.config.folder)

    @property
    def shards(self) -> Path:
        return self.folder / "shards"

    def _executor(self):
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "jobs", cluster=self.config.cluster)
        params: dict[str, Any] = {
            "timeout_min": self.config.timeout_min,
            "cpus_per_task": self.config.threads,
            "name": "reflow",
        }
        if self.config.gpus:
            params["gpus_per_node"] = self.config.gpus
        if self.config.cluster == "slurm":
            params["slurm_array_parallelism"] = self.config.array_parallelism
            if self.config.partition:
                params["slurm_partition"] = self.config.partition
        executor.update_parameters(**params)
        return executor

    def run(self, tasks: Iterable[Task], env: ExecEnv) -> Iterator[tuple[Task, list[RowResult]]]:
        tasks = list(tasks)  # claimed all at once: the array is submitted in one go
        todo = [t for t in tasks if not (self.shards / shard_name(t)).is_file()]
        for task in tasks:  # shards left by an earlier submission are folded in first
            path = self.shards / shard_name(task)
            if path.is_file():
                yield task, read_shard(path)
        if not todo:
            return
        executor = self._executor()
        batches = family_batches(todo)
        paths = [[str(self.shards / shard_name(t)) for t in batch] for batch in batches]
        jobs = executor.map_array(
            run_shard, batches, [env] * len(batches), paths, [self.config.threads] * len(batches)
        )
        if not self.config.wait:
            print(f"submitted {len(jobs)} array tasks; fold their rows in with `reflow merge`")
            return
        pending = dict(zip(jobs, batches, strict=True))
        while pending:
            for job in [j for j in pending if j.done()]:
                batch = pending.pop(job)
                failure = None
                for task in batch:
                    path = self.shards / shard_name(task)
                    if path.is_file():
                        yield task, read_shard(path)
                        continue
                    if failure is None:
                        try:
                            job.result()
                            failure = f"job {job.job_id} finished without writing its shard"
                        except Exception as exc:
                            failure = f"job {job.job_id} failed: {type(exc).__name__}: {exc}"
                    yield task, crash_rows(task, failure[:500])
            if pending:
                time.sleep(self.config.poll_seconds)
