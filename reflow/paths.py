"""Where data, checkpoints and caches live.

``REFLOW_HOME`` (for example ``../shared``) holds ``data/`` and ``models/``; without it the
checkout's ``datasets/`` folder is the data root and downloads go to the user cache. Caches never
go inside a data folder, which may be read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def reflow_home() -> Path | None:
    """The folder named by ``REFLOW_HOME``, if set."""
    home = os.environ.get("REFLOW_HOME")
    return Path(home).expanduser().resolve() if home else None


def data_root() -> Path:
    """Root of the dataset folders: ``REFLOW_DATA`` > ``REFLOW_HOME/data`` > ``datasets/``."""
    if explicit := os.environ.get("REFLOW_DATA"):
        return Path(explicit).expanduser().resolve()
    home = reflow_home()
    return home / "data" if home else _CHECKOUT / "datasets"


def checkpoint_dirs() -> list[Path]:
    """Folders searched, in order, for a zoo checkpoint file."""
    dirs = []
    if home := reflow_home():
        dirs.append(home / "models")
    dirs.append(cache_dir() / "checkpoints")
    return dirs


def cache_dir() -> Path:
    """The user cache (``REFLOW_CACHE`` > ``$XDG_CACHE_HOME/reflow`` > ``~/.cache/reflow``)."""
    if explicit := os.environ.get("REFLOW_CACHE"):
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reflow"
