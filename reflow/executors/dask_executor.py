"""Dask distributed: a local cluster of worker processes started here (one GPU each with
``gpus``), or an existing cluster's scheduler (workers started with ``dask worker`` under SLURM,
say). Rows stream back to the driving process as tasks finish.

The pitfalls this handles: workers are not daemonic (a data loader spawns children);
``allowed-failures`` is 0 by default, so a task that kills its worker becomes crash rows instead
of being rerun on every worker in turn; Dask starts workers with OMP_NUM_THREADS=1, so each task
sets torch's thread count itself (and the local cluster's environment says the same); the driver
never touches CUDA (devices are resolved in the workers). Everything binds to 127.0.0.1 unless an
existing scheduler is named, and nobody else gets in: the local cluster speaks TLS with a
temporary certificate made for this run (`distributed.security.Security.temporary`), so another
process on the machine (any user of a shared login node) cannot connect to the scheduler or the
workers and run code there. An existing cluster is joined with the TLS files named in a
``security`` file (TOML: ``ca_file``, ``cert``, ``key``), and is connected to before anything
else happens, so a wrong address is one line, not a traceback after the store was created.
The members of a selection family (chita_s and chita_u at one sparsity, …) go to one worker as
one Dask task, so their shared search still runs once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflow.errors import ReflowError
from reflow.execute import ExecEnv, RowResult, SetupFailed, execute
from reflow.executors.base import Executor, crash_rows, register, torch_threads
from reflow.options import check, option
from reflow.plan import Task, family_batches


@dataclass(frozen=True)
class DaskConfig:
    workers: int = option(2, "worker processes of a local cluster", minimum=1)
    threads: int = option(1, "torch threads in each worker (torch.set_num_threads)", minimum=1)
    gpus: str = option("", "comma list of GPU ids; a local worker is pinned to each")
    scheduler: str = option("", "an existing cluster's scheduler address; empty: a local cluster")
    allowed_failures: int = option(
        0, "reruns of a task whose worker died (Dask allowed-failures)", minimum=0
    )
    memory_limit: str = option("0", "per-worker memory limit of a local cluster ('0': none)")
    security: str = option(
        "", "TOML file with ca_file, cert and key (TLS) for an existing --scheduler"
    )
    connect_timeout: float = option(10.0, "seconds to wait for an existing --scheduler")

    def __post_init__(self) -> None:
        check(self)
        if self.security and not self.scheduler:
            raise ReflowError(
                "security names TLS files for an existing cluster: give --scheduler too (a "
                "local cluster makes its own temporary certificate)"
            )


def load_security(path: str):
    """TLS settings for an existing cluster from a TOML file: ``ca_file``, ``cert``, ``key``
    (paths relative to the file), encryption required."""
    import tomllib

    from distributed.security import Security

    file = Path(path)
    try:
        values = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ReflowError(f"cannot read the security file {file}: {exc}") from None
    missing = {"ca_file", "cert", "key"} - set(values)
    if missing:
        raise ReflowError(f"security file {file} lacks {', '.join(sorted(missing))}")
    files = {k: (file.parent / str(values[k])).resolve() for k in ("ca_file", "cert", "key")}
    for key, where in files.items():
        if not where.is_file():
            raise ReflowError(f"security file {file}: {key} {where} not found")
    return Security(
        tls_ca_file=str(files["ca_file"]),
        tls_client_cert=str(files["cert"]),
        tls_client_key=str(files["key"]),
        require_encryption=True,
    )


def run_in_worker(batch: tuple[Task, ...], env: ExecEnv, threads: int) -> list[list[RowResult]]:
    """The function every Dask task runs: this worker's thread count, then the batch's tasks."""
    with torch_threads(threads):
        return [execute(task, env) for task in batch]


def dask_settings(config: DaskConfig):
    import dask

    return dask.config.set(
        {
            "distributed.scheduler.allowed-failures": config.allowed_failures,
            "distributed.worker.daemon": False,
            "distributed.nanny.pre-spawn-environ": thread_env(config.threads),
        }
    )


def thread_env(threads: int) -> dict[str, str]:
    """The thread-count variables a worker process starts with."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


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
        self._security = None

    def check(self) -> None:
        """The engine is installed, and an existing scheduler answers (connected to now)."""
        super().check()
        if not self.config.scheduler or self._client is not None:
            return
        from distributed import Client

        self._security = load_security(self.config.security) if self.config.security else None
        try:
            with dask_settings(self.config):
                self._client = Client(
                    self.config.scheduler,
                    timeout=self.config.connect_timeout,
                    security=self._security,
                )
        except Exception as exc:
            raise ReflowError(
                f"cannot reach the Dask scheduler at {self.config.scheduler} within "
                f"{self.config.connect_timeout:g} s ({type(exc).__name__}: {exc}); check the "
                "address (and --executor-set security=FILE for a TLS cluster), or drop "
                "--scheduler for a local cluster"
            ) from None

    def _local_cluster(self):
        from distributed import Nanny, Scheduler, SpecCluster
        from distributed.security import Security

        self._security = Security.temporary()

        gpus = [g.strip() for g in self.config.gpus.split(",") if g.strip()]
        count = len(gpus) or self.config.workers
        workers = {}
        for i in range(count):
            env = thread_env(self.config.threads)
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
                    "security": self._security,
                    "protocol": "tls",
                },
            }
        scheduler = {
            "cls": Scheduler,
            "options": {
                "host": "127.0.0.1",
                "dashboard_address": None,
                "security": self._security,
                "protocol": "tls",
            },
        }
        return SpecCluster(
            workers=workers, scheduler=scheduler, silence_logs=40, security=self._security
        )

    def run(self, tasks: Iterable[Task], env: ExecEnv) -> Iterator[tuple[Task, list[RowResult]]]:
        from distributed import Client, as_completed

        with dask_settings(self.config):
            if self.config.scheduler:
                self.check()
            else:
                self._cluster = self._local_cluster()
                self._client = Client(self._cluster, security=self._security)
            futures = {
                self._client.submit(
                    run_in_worker,
                    batch,
                    env,
                    self.config.threads,
                    pure=False,
                    key=f"reflow-task-{i}",
                ): batch
                for i, batch in enumerate(family_batches(list(tasks)))
            }
            for future in as_completed(futures):
                batch = futures[future]
                try:
                    results = future.result()
                except SetupFailed:
                    raise
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
