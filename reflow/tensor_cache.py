"""A cache of decoded tensors in the user cache folder, safe against half-written files.

Files are written to a temporary name in the same folder and moved into place with
``os.replace``, which is atomic: a reader sees the old file, the new file, or none.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from reflow import paths


def atomic_torch_save(obj: object, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_tensors(
    name: str, build: Callable[[], dict[str, torch.Tensor]], folder: Path | None = None
) -> dict[str, torch.Tensor]:
    """Load ``name`` from the cache, or build and store it. A corrupt file is rebuilt."""
    target = (folder or paths.cache_dir() / "tensors") / f"{name}.pt"
    if target.is_file():
        try:
            return torch.load(target, map_location="cpu", weights_only=True)
        except Exception:  # truncated or foreign file: rebuild it below
            target.unlink(missing_ok=True)
    tensors = build()
    atomic_torch_save(tensors, target)
    return tensors
