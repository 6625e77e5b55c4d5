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
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
