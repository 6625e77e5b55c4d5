"""Where data, checkpoints and caches live.

``REFLOW_HOME`` (for example ``../shared``) holds ``data/`` and ``models/``; without it the
checkout's ``datasets/`` folder is the data root and downloads go to the user cache. Caches never
go inside a data folder, which may be read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

from reflow.errors import ReflowError

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


def check_output(path: Path, flag: str, folder: bool = False) -> Path:
    """Raise a one-line error, before any work, when ``path`` cannot be written as a file (or,
    with ``folder``, as a folder): it is the other kind of thing, or one of its parents is a
    file. Returns the path."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ReflowError(f"{flag} {path} is a file; pass a folder")
    if not folder and path.is_dir():
        raise ReflowError(f"{flag} {path} is a directory; pass a file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ReflowError(f"{flag} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ReflowError(f"{flag} {path}: cannot write into {parent}")
            break
    return path
