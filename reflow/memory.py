"""A guard for large allocations: refuse, with the size and the option to lower, before an
allocation that would not fit (instead of swapping the machine or dying in the OOM killer)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch

from reflow.errors import ReflowError

GiB = 2**30


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (MemAvailable on Linux CPUs), or None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def require_memory(
    nbytes: int,
    what: str,
    lower: str,
    device: torch.device | str | None = "cpu",
    limit_gb: float | None = None,
    limit_option: str | None = None,
) -> None:
    """Raise a `ReflowError` when ``nbytes`` exceed the configured limit or the free memory of
    ``device`` (None: the limit only).

    ``what`` names the allocation with its shape; ``lower`` names the option(s) that shrink it.
    """
    need = nbytes / GiB
    if limit_gb is not None and need > limit_gb:
        raise ReflowError(
            f"{what} needs {need:.1f} GiB, over the {limit_gb:g} GiB limit"
            + (f" ({limit_option})" if limit_option else "")
            + f"; lower {lower}"
            + (f" or raise {limit_option}" if limit_option else "")
        )
    if device is None:
        return
    device = torch.device(device)
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise ReflowError(
            f"{what} needs {need:.1f} GiB but {device} has {free / GiB:.1f} GiB free; lower {lower}"
        )


@dataclass(frozen=True)
class MemoryNeed:
    """The largest allocation a method will make, known from shapes and options alone: checked
    when the method runs and, before any row runs, when the sweep is planned."""

    nbytes: int
    what: str
    lower: str
    limit_gb: float | None = None
    limit_option: str | None = None

    def check(self, device: torch.device | str | None = "cpu") -> None:
        require_memory(self.nbytes, self.what, self.lower, device, self.limit_gb, self.limit_option)


def resident_bytes() -> int:
    """This process's resident set size now (Linux), or 0 when unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakRss:
    """The peak resident memory a block of code adds, sampled every ``interval`` seconds by a
    thread (``ru_maxrss`` only ever grows, so it cannot say what one of several steps needed)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_bytes())

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = resident_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def added_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20
