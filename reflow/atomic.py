"""Atomic file writes: write a temporary file in the target's folder, flush it to disk, then
``os.replace`` it into place, so that a reader (or a run killed mid-write) sees the old file, the
new file, or none, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    target: Path | str, write: Callable[[IO[Any]], None], binary: bool = False
) -> None:
    """Call ``write(file)`` on a temporary file and move it to ``target``."""
    target = Path(target)
    tmp = write_temporary(target, write, binary)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_temporary(
    target: Path | str, write: Callable[[IO[Any]], None], binary: bool = False
) -> Path:
    """Write a hidden temporary file beside ``target``, flushed to disk and with the mode a new
    file gets under the user's umask (``mkstemp`` makes 0600 files, which colleagues sharing a
    results folder could not read); the caller moves it into place with ``os.replace``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` can only
    be read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
