"""Dask distributed: a local cluster of worker processes started here (one GPU each with
``gpus``), or an existing cluster's scheduler (workers started with ``dask worker`` under SLURM,
say). Rows stream back to the driving process as tasks finish.

The pitfalls this handles: workers are not daemonic (a data loader spawns children);
``allowed-failures`` is 0 by default, so a task that kills its worker becomes crash rows instead
of being rerun on every worker in turn; Dask starts workers with OMP_NUM_THREADS=1, so each task
sets torch's thread count itself (and the local cluster's environment says the same); the driver
never touches CUDA (devices are resolved in the workers). Everything binds to 127.0.0.1 unless an
existing scheduler is named. The members of a selection family (chita_s and chita_u at one
sparsity, …) go to one worker as one Dask task, so their shared search still runs once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from reflow.errors import ReflowError
from reflow.execute import ExecEnv, RowResult, execute
from reflow.executors.base import Executor, crash_rows, register, torch_threads
from reflow.options import option
from reflow.plan import Task, family_batches


@dataclass(frozen=True)
class DaskConfig:
    workers: int = option(2, "worker processes of a local cluster")
    threads: int = option(1, "torch threads in each worker (torch.set_num_threads)")
    gpus: str = option("", "comma list of GPU ids; a local worker is pinned to each")
    scheduler: str = option("", "an existing cluster's scheduler address; empty: a local cluster")
    allowed_failures: int = option(0, "reruns of a task whose worker died (Dask allowed-failures)")
    memory_limit: str = option("0", "per-worker memory limit of a local cluster ('0': none)")

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise ReflowError("--workers and --threads must be at least 1")
        if self.allowed_failures < 0:
            raise ReflowError("allowed_failures must be >= 0")


def run_in_worker(batch: tuple[Task, ...], env: ExecEnv, threads: int) -> list[list[RowResult]]:
    """The function every Dask task runs: this worker's thread count, then the batch's tasks."""
    with torch_threads(threads):
        return [execute(task, env) for task in batch]


@register
class DaskExecutor(Executor):
    name = "dask"
    summary = "Dask distributed: a local cluster of processes (one GPU each), or --scheduler ADDR"
    Config = DaskConfig
    requires = ("dask", "distributed")
    extra = "dask"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._client = None
        self._cluster = None

    def _thread_env(self) -> dict[str, str]:
        n = str(self.config.threads)
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}

    def _local_cluster(self):
        from distributed import Nanny, Scheduler, SpecCluster

        gpus = [g.strip() for g in self.config.gpus.split(",") if g.strip()]
        count = len(gpus) or self.config.workers
        workers = {}
        for i in range(count):
            env = self._thread_env()
            env["CUDA_VISIBLE_DEVICES"] = (
                gpus[i] if gpus else os.environ.get("CUDA_VISIBLE_DEVICES", "")
            )
            workers[f"reflow-{i}"] = {
                "cls": Nanny,
                "options": {
                    "nthreads": 1,
                    "host": "127.0.0.1",
                    "env": env,
                    "memory_limit": self.config.memory_limit,
                    "dashboard_address": None,
                },
            }
        scheduler = {
            "cls": Scheduler,
            "options": {"host": "127.0.0.1", "dashboard_address": None},
        }
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40)

    def run(self, tasks: list[Task], env: ExecEnv) -> Iterator[tuple[Task, list[RowResult]]]:
        import dask
        from distributed import Client, as_completed

        settings = {
            "distributed.scheduler.allowed-failures": self.config.allowed_failures,
            "distributed.worker.daemon": False,
            "distributed.nanny.pre-spawn-environ": self._thread_env(),
        }
        with dask.config.set(settings):
            if self.config.scheduler:
                self._client = Client(self.config.scheduler)
            else:
                self._cluster = self._local_cluster()
                self._client = Client(self._cluster)
            futures = {
                self._client.submit(
                    run_in_worker,
                    batch,
                    env,
                    self.config.threads,
                    pure=False,
                    key=f"reflow-task-{i}",
                ): batch
                for i, batch in enumerate(family_batches(tasks))
            }
            for future in as_completed(futures):
                batch = futures[future]
                try:
                    results = future.result()
                except Exception as exc:  # KilledWorker, a lost connection, …
                    reason = type(exc).__name__
                    if reason == "KilledWorker":
                        reason = "the worker running this task died (KilledWorker)"
                    results = [crash_rows(task, f"{reason}: {exc}"[:500]) for task in batch]
                finally:
                    future.release()
                yield from zip(batch, results, strict=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
