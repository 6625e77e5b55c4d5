"""Executors: serial (in process), dask (Dask distributed), submitit (SLURM job arrays).

The dask and submitit modules import their engines only when they run, so registering them costs
nothing and a missing optional extra is reported with the install command.
"""

# isort: off
from reflow.executors import base
from reflow.executors import dask_executor, submitit_executor  # noqa: F401 (registration)
from reflow.executors.base import EXECUTORS, Executor, get_executor

# isort: on

__all__ = ["EXECUTORS", "Executor", "base", "get_executor"]
