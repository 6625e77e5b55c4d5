"""A cache of decoded tensors in the user cache folder, safe against half-written files.

Files are written to a temporary name in the same folder and moved into place with
``os.replace``, which is atomic: a reader sees the old file, the new file, or none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from reflow import paths
from reflow.atomic import atomic_write


def atomic_torch_save(obj: object, target: Path) -> None:
    atomic_write(target, lambda f: torch.save(obj, f), binary=True)


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
