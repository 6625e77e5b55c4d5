"""The executor seam: how tasks reach workers. Executors are registered like methods and repairs;
the planner and the committing writer never know which one runs.

An executor yields each task's rows as the task completes (in any order); the driving process
commits them. A task whose worker dies is yielded with error rows (``crash: ...``), never rerun
behind the user's back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from reflow.errors import ReflowError
from reflow.execute import ExecEnv, RowResult, execute
from reflow.options import NoConfig, check, option
from reflow.plan import Task
from reflow.registry import Registry, missing_requirements


class Executor(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    #: Python packages the executor needs (an optional extra), with the extra's name.
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def check(self) -> None:
        """Raise before planning when the engine behind this executor is not installed."""
        if reason := missing_requirements(f"--executor {self.name}", self.requires, self.extra):
            raise ReflowError(reason)

    @abstractmethod
    def run(self, tasks: Iterable[Task], env: ExecEnv) -> Iterator[tuple[Task, list[RowResult]]]:
        """Yield ``(task, rows)`` for every task as it completes. ``tasks`` is an iterator that
        claims each task in the store as it is drawn (`reflow.claims`): draw lazily to share a
        folder's tasks with other drivers, or all at once to submit them together."""

    def close(self) -> None:  # noqa: B027 (optional hook: most executors hold nothing)
        """Release workers and clusters this executor started."""


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Every executor's one way to apply --threads: ``threads`` torch threads, the previous count
    given back after, so a library caller's process is left as it was. 0 calls nothing at all: an
    explicit ``set_num_threads`` changes how MKL threads (see `reflow.baselines.spd`)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


EXECUTORS: Registry[type[Executor]] = Registry("executor")
register = EXECUTORS.register


def get_executor(name: str, options: dict[str, str] | None = None) -> Executor:
    return EXECUTORS.build(name, options)


@dataclass(frozen=True)
class SerialConfig:
    # Iterative methods (M-FAC's 16 recomputation steps) amplify the last-bit differences that
    # another thread count's reduction order makes: equal --threads reproduce a Dask row exactly.
    threads: int = option(
        0, "torch threads in this process (torch.set_num_threads); 0: as is", minimum=0
    )

    def __post_init__(self) -> None:
        check(self)


@register
class SerialExecutor(Executor):
    name = "serial"
    summary = "every task in this process, one after another (the default)"
    Config = SerialConfig

    def run(self, tasks: Iterable[Task], env: ExecEnv) -> Iterator[tuple[Task, list[RowResult]]]:
        with torch_threads(self.config.threads):
            for task in tasks:
                yield task, execute(task, env)


def crash_rows(task: Task, reason: str) -> list[RowResult]:
    """Error rows for a task whose worker died (the rows say so; a rerun retries them)."""
    from reflow.execute import _error_row

    return [RowResult(_error_row(task, spec, None, _Crash(reason))) for spec in task.rows]


class _Crash(ReflowError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"crash: {reason}")
