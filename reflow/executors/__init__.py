"""Executors: serial (in process), dask (Dask distributed), submitit (SLURM job arrays)."""

from reflow.executors import base
from reflow.executors.base import EXECUTORS, Executor, get_executor

__all__ = ["EXECUTORS", "Executor", "base", "get_executor"]
