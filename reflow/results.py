"""The result store: tidy CSV tables in one readable folder, written atomically, resumable.

``results.csv`` has one row per (model, checkpoint, dataset, method, repair, sparsity, seed,
config_hash); ``probes.csv`` one row per BN layer of each result (variance ratios);
``layers.csv`` one row per prunable layer (achieved density, for layer collapse). Every write
rewrites a table to a temporary file and moves it into place, so a killed sweep leaves each table
either before or after a row, never half of one. Auxiliary rows are written before their result
row; a result row is the commit point, and auxiliary rows without one are ignored and replaced.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from reflow.errors import ReflowError

KEY = ("model", "checkpoint", "dataset", "method", "repair", "sparsity", "seed", "config_hash")
TABLES = ("results", "probes", "layers")


def row_key(row: dict) -> tuple:
    """The identity of a row, normalised so CSV round trips compare equal."""
    return tuple(
        round(float(row[k]), 6)
        if k == "sparsity"
        else (int(row[k]) if k == "seed" else str(row[k]))
        for k in KEY
    )


def write_csv_atomic(frame: pd.DataFrame, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            frame.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """A results folder. Safe against kills; a lock file keeps two writers apart."""

    def __init__(self, folder: Path | str, create: bool = True) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ReflowError(
                f"results folder {self.folder} is a file; pass a folder path with --out"
            )
        if create:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReflowError(f"cannot create results folder {self.folder}: {exc}") from exc
        elif not (self.folder / "results.csv").is_file():
            raise ReflowError(
                f"no results in {self.folder} (looked for {self.folder / 'results.csv'}); "
                "create them with `reflow run ... --out FOLDER`"
            )

    def path(self, table: str) -> Path:
        return self.folder / f"{table}.csv"

    def read(self, table: str = "results") -> pd.DataFrame:
        """A table; auxiliary rows whose result row was never committed are left out."""
        frame = self._read_raw(table)
        if table != "results" and not frame.empty:
            committed = set(self._read_raw("results").get("run_id", []))
            frame = frame[frame["run_id"].isin(committed)].reset_index(drop=True)
        return frame

    def _read_raw(self, table: str) -> pd.DataFrame:
        path = self.path(table)
        if not path.is_file():
            return pd.DataFrame()
        try:
            return pd.read_csv(path, keep_default_na=True)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ReflowError(
                f"cannot read {path}: {exc}. Fix or move the file, then run again."
            ) from exc

    def finished(self) -> set[tuple]:
        """Keys of rows that finished without error (errored rows are run again)."""
        frame = self._read_raw("results")
        if frame.empty:
            return set()
        ok = frame[frame["error"].isna()] if "error" in frame else frame
        return {row_key(r) for r in ok.to_dict("records")}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.folder / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, row: dict, probes: list[dict] = (), layers: list[dict] = ()) -> None:
        """Commit one result row with its probe and layer rows, replacing any earlier attempt."""
        run_id = row["run_id"]
        with self._locked():
            for table, rows in (("probes", probes), ("layers", layers), ("results", [row])):
                old = self._read_raw(table)
                if not old.empty:
                    old = old[old["run_id"] != run_id]
                new = pd.DataFrame([{"run_id": run_id, **r} for r in rows])
                frames = [f for f in (old, new) if not f.empty]
                if frames:
                    write_csv_atomic(pd.concat(frames, ignore_index=True), self.path(table))
