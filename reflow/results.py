"""The result store: an embedded SQLite database in the results folder (``results.sqlite``),
with tidy CSV exports beside it for spreadsheets and pandas.

Tables: ``results`` (one row per model, checkpoint, dataset, method, repair, sparsity, seed
and config hash: the UNIQUE row key), ``probes`` (one row per normalisation layer of a result:
variance ratios), ``layers`` (one row per prunable layer: achieved density), ``outcomes`` (a
row's predicted class per evaluated example, `reflow.outcomes`) and ``eval_orders`` (the labels
of each evaluated example order, once). A result row and its other rows are committed in one
transaction, so a killed sweep leaves a row whole or absent, and the UNIQUE key makes a
duplicate impossible. Key columns are typed (TEXT hashes stay text); other columns are added as
rows bring them, typed by their first value.

A folder written by the earlier CSV store is imported on first use (config hashes recomputed
under the non-default identity rule, so finished rows are recognised).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reflow.atomic import atomic_write
from reflow.errors import ReflowError
from reflow.outcomes import Outcomes, unpack

KEY = ("model", "checkpoint", "dataset", "method", "repair", "sparsity", "seed", "config_hash")
TABLES = ("results", "probes", "layers")
DATABASE = "results.sqlite"
_KEY_TYPES = {"sparsity": "REAL", "seed": "INTEGER"}


def row_key(row: Mapping[str, Any]) -> tuple:
    """The identity of a row, normalised so that stored and planned keys compare equal."""
    return tuple(
        round(float(row[k]), 6)
        if k == "sparsity"
        else (int(row[k]) if k == "seed" else str(row[k]))
        for k in KEY
    )


def write_csv_atomic(frame: pd.DataFrame, target: Path) -> None:
    atomic_write(target, lambda f: frame.to_csv(f, index=False))


def _sql_type(value: Any) -> str:
    """Declared type for a new column: TEXT, INTEGER, REAL, or none (values kept as given; never
    NUMERIC, whose affinity would turn a text hash like '1234567890' into a number)."""
    if isinstance(value, bool | int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, str):
        return "TEXT"
    return ""


def _plain(value: Any) -> Any:
    """A value SQLite stores as is (NaN becomes NULL; containers become JSON text)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_integrity(db: sqlite3.Connection, database: Path) -> None:
    """Refuse a damaged database before anything is read from it or appended to it."""
    problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        first = " ".join(" ".join(problems).split())[:200]
        raise ReflowError(
            f"{database} is damaged (SQLite quick_check: {first}); restore it from a copy, or "
            "move it away to start a new store"
        )


def _open_readonly(database: Path) -> sqlite3.Connection:
    """A connection that cannot write. A WAL store needs its ``-shm`` file to be readable; on a
    read-only folder without one SQLite cannot open it read-only, and the file is then read as
    immutable (no writer can be active on a read-only file system anyway)."""
    uri = database.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60)
        _check_integrity(db, database)
        return db
    except sqlite3.OperationalError as first:
        try:
            db = sqlite3.connect(f"{uri}?immutable=1", uri=True)
            _check_integrity(db, database)
            return db
        except sqlite3.DatabaseError:
            raise ReflowError(f"cannot read {database}: {first}") from None
    except sqlite3.DatabaseError as exc:
        raise ReflowError(
            f"cannot read {database}: {exc}; it is not a results store, or it is damaged"
        ) from None


class ResultStore:
    """A results folder backed by ``results.sqlite``; safe against kills, concurrent readers and
    several writing drivers (schema changes and rows are written under SQLite's write lock).

    ``readonly`` opens an existing store for reading only (tables, reports, exports): nothing is
    created or changed, and a store on a read-only file system can be read."""

    def __init__(self, folder: Path | str, create: bool = True, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.readonly = readonly
        if self.folder.exists() and not self.folder.is_dir():
            raise ReflowError(
                f"results folder {self.folder} is a file; pass a folder path with --out"
            )
        database = self.folder / DATABASE
        legacy = self.folder / "results.csv"
        if (readonly or not create) and not database.is_file() and not legacy.is_file():
            raise ReflowError(
                f"no results in {self.folder} (looked for {database}); "
                "create them with `reflow run ... --out FOLDER`"
            )
        if readonly and not database.is_file():  # the earlier CSV store: imported once, below
            self.readonly = readonly = False
        if readonly:
            self.db = _open_readonly(database)
            self._columns = {t: self._table_columns(t) for t in TABLES}
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReflowError(f"cannot create results folder {self.folder}: {exc}") from exc
        fresh = not database.is_file()
        try:
            self.db = sqlite3.connect(database, timeout=60, isolation_level=None)
            _check_integrity(self.db, database)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise ReflowError(
                f"cannot open {database}: {exc}. Move the file away to start a new store."
            ) from exc
        if fresh and legacy.is_file():
            try:
                self._import_csv_folder()
            except BaseException:  # leave no half-imported database behind: retry imports again
                self.db.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{database}{suffix}").unlink(missing_ok=True)
                raise

    # -- schema ---------------------------------------------------------------------------------
    def _create_schema(self) -> None:
        """Create the tables if they are missing, in one write transaction: two drivers starting
        on a new folder at once both find (or make) the same schema."""
        keys = ", ".join(f"{k} {_KEY_TYPES.get(k, 'TEXT')} NOT NULL" for k in KEY)
        statements = [
            f"CREATE TABLE IF NOT EXISTS results (run_id TEXT PRIMARY KEY, {keys}, error TEXT, "
            f"UNIQUE ({', '.join(KEY)}))",
            "CREATE TABLE IF NOT EXISTS probes (run_id TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS layers (run_id TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS probes_run ON probes (run_id)",
            "CREATE INDEX IF NOT EXISTS layers_run ON layers (run_id)",
            "CREATE TABLE IF NOT EXISTS outcomes (run_id TEXT PRIMARY KEY, "
            "eval_order TEXT NOT NULL, predicted BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS eval_orders (eval_order TEXT PRIMARY KEY, "
            "labels BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS claims (task TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "host TEXT NOT NULL, pid INTEGER NOT NULL, expires REAL NOT NULL)",
        ]
        with self.write():
            for statement in statements:
                self.db.execute(statement)
        self._columns = {t: self._table_columns(t) for t in TABLES}

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction (SQLite's write lock is taken at its start; waits up to 60 s
        for another writer)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def _table_columns(self, table: str) -> set[str]:
        return {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}

    def _ensure_columns(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add the columns ``rows`` bring (inside the caller's write transaction). The columns
        are read again under the lock first: another driver may have added them meanwhile."""
        wanted = {name: value for row in rows for name, value in row.items()}
        if set(wanted) <= self._columns[table]:
            return
        self._columns[table] = self._table_columns(table)
        for name, value in wanted.items():
            if name not in self._columns[table]:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {_quote(name)} {_sql_type(value)}")
                self._columns[table].add(name)

    # -- writing --------------------------------------------------------------------------------
    def add(
        self,
        row: Mapping[str, Any],
        probes: Iterable[Mapping[str, Any]] = (),
        layers: Iterable[Mapping[str, Any]] = (),
        outcomes: Outcomes | None = None,
    ) -> None:
        """Commit one result row with its probe and layer rows and its per-example outcomes,
        replacing an earlier attempt (an errored row) of the same key: all in one
        transaction."""
        self._refuse_readonly()
        run_id = str(row["run_id"])
        results = [{k: _plain(v) for k, v in row.items()}]
        aux = {
            "probes": [{"run_id": run_id, **{k: _plain(v) for k, v in r.items()}} for r in probes],
            "layers": [{"run_id": run_id, **{k: _plain(v) for k, v in r.items()}} for r in layers],
        }
        results[0]["sparsity"] = round(float(row["sparsity"]), 6)
        key = row_key(row)
        with self.write():
            old = self.db.execute(
                f"SELECT run_id FROM results WHERE {' AND '.join(f'{k} = ?' for k in KEY)}", key
            ).fetchall()
            for (old_id,) in [*old, (run_id,)]:
                for table in ("probes", "layers", "outcomes", "results"):
                    self.db.execute(f"DELETE FROM {table} WHERE run_id = ?", (old_id,))
            for table, rows in (("results", results), *aux.items()):
                self._insert(table, rows)
            if outcomes is not None:
                self.db.execute(
                    "INSERT OR IGNORE INTO eval_orders VALUES (?, ?)",
                    (outcomes.eval_order, outcomes.labels),
                )
                self.db.execute(
                    "INSERT INTO outcomes VALUES (?, ?, ?)",
                    (run_id, outcomes.eval_order, outcomes.predicted),
                )

    def _refuse_readonly(self) -> None:
        if self.readonly:
            raise ReflowError(f"{self.folder} was opened read-only; open it to write")

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self._ensure_columns(table, rows)
        for row in rows:
            names = list(row)
            self.db.execute(
                f"INSERT INTO {table} ({', '.join(map(_quote, names))}) "
                f"VALUES ({', '.join('?' * len(names))})",
                [row[n] for n in names],
            )

    # -- reading --------------------------------------------------------------------------------
    def finished(self) -> set[tuple]:
        """Keys of rows that finished without error (errored rows are run again)."""
        rows = self.db.execute(f"SELECT {', '.join(KEY)} FROM results WHERE error IS NULL")
        return {row_key(dict(zip(KEY, r, strict=True))) for r in rows}

    def finished_among(self, keys: Iterable[tuple]) -> set[tuple]:
        """Which of ``keys`` finished without error: one lookup per key on the UNIQUE index,
        where `finished` reads every row of the store."""
        where = " AND ".join(f"{k} = ?" for k in KEY)
        sql = f"SELECT 1 FROM results WHERE {where} AND error IS NULL"
        return {key for key in keys if self.db.execute(sql, key).fetchone() is not None}

    def read(self, table: str = "results") -> pd.DataFrame:
        if table not in TABLES:
            raise ReflowError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        if table == "results":
            sql = "SELECT * FROM results ORDER BY rowid"
        else:  # auxiliary rows carry their result's key columns for filtering
            keys = ", ".join(f"r.{k}" for k in KEY)
            sql = (
                f"SELECT {keys}, a.* FROM {table} a JOIN results r ON a.run_id = r.run_id "
                "ORDER BY a.rowid"
            )
        frame = pd.read_sql_query(sql, self.db)
        if table == "results" and "error" in frame:
            frame["error"] = frame["error"].astype(object).where(frame["error"].notna(), None)
        return frame

    def outcomes(self, run_ids: Iterable[str] | None = None) -> dict[str, Outcomes]:
        """Per-example outcomes by run id (all rows that have them when ``run_ids`` is None).
        A store written before outcomes were kept has none: an empty mapping, not an error."""
        if not self._has_table("outcomes"):
            return {}
        sql = (
            "SELECT o.run_id, o.eval_order, e.labels, o.predicted FROM outcomes o "
            "JOIN eval_orders e ON o.eval_order = e.eval_order"
        )
        rows = self.db.execute(sql).fetchall()
        wanted = None if run_ids is None else set(map(str, run_ids))
        return {
            rid: Outcomes(order, labels, predicted)
            for rid, order, labels, predicted in rows
            if wanted is None or rid in wanted
        }

    def _has_table(self, table: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.db.execute(sql, (table,)).fetchone() is not None

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def path(self, table: str = "results") -> Path:
        """Where ``table``'s CSV export lives."""
        return self.folder / f"{table}.csv"

    def export(
        self, fmt: str = "csv", folder: Path | None = None, predictions: bool = False
    ) -> list[Path]:
        """Write every table as ``fmt`` (csv or parquet) into ``folder`` (default: the store's);
        with ``predictions`` also the per-example outcomes (`export_predictions`)."""
        if fmt not in ("csv", "parquet"):
            raise ReflowError(f"export format must be csv or parquet, got {fmt!r}")
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise ReflowError(
                    "parquet export needs a parquet engine: pip install pyarrow (or use --format "
                    "csv)"
                ) from exc
        folder = Path(folder) if folder else self.folder
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for table in TABLES:
            frame = self.read(table)
            target = folder / f"{table}.{fmt}"
            if fmt == "csv":
                write_csv_atomic(frame, target)
            else:
                atomic_write(
                    target, lambda f, frame=frame: frame.to_parquet(f, index=False), binary=True
                )
            written.append(target)
        if predictions:
            written.append(self.export_predictions(fmt, folder))
        return written

    def export_predictions(self, fmt: str, folder: Path) -> Path:
        """Per-example outcomes: ``predictions.npz`` (csv format; per example order: its labels,
        the run ids and a runs × examples matrix of predicted classes) or ``predictions.parquet``
        (one row per run and example: run_id, eval_order, example, label, predicted)."""
        outcomes = self.outcomes()
        if not outcomes:
            raise ReflowError(
                f"{self.folder} has no per-example outcomes (rows written before they were "
                "kept); run the rows again in a new folder to get them"
            )
        by_order: dict[str, list[tuple[str, Outcomes]]] = {}
        for rid, o in outcomes.items():
            by_order.setdefault(o.eval_order, []).append((rid, o))
        if fmt == "csv":
            arrays = {}
            for order, runs in by_order.items():
                arrays[f"labels_{order}"] = unpack(runs[0][1].labels)
                arrays[f"run_ids_{order}"] = np.array([rid for rid, _ in runs])
                arrays[f"predicted_{order}"] = np.stack([unpack(o.predicted) for _, o in runs])
            target = folder / "predictions.npz"
            atomic_write(target, lambda f: np.savez_compressed(f, **arrays), binary=True)
            return target
        parts = []
        for rid, o in outcomes.items():
            labels, predicted = unpack(o.labels), unpack(o.predicted)
            parts.append(
                pd.DataFrame(
                    {
                        "run_id": rid,
                        "eval_order": o.eval_order,
                        "example": np.arange(len(labels)),
                        "label": labels,
                        "predicted": predicted,
                    }
                )
            )
        frame = pd.concat(parts, ignore_index=True)
        target = folder / "predictions.parquet"
        atomic_write(target, lambda f: frame.to_parquet(f, index=False), binary=True)
        return target

    def close(self) -> None:
        self.db.close()

    # -- import of the earlier CSV store --------------------------------------------------------
    def _import_csv_folder(self) -> None:
        from reflow.identity import identity_hash_of_stored_config, run_id

        def read(name: str) -> pd.DataFrame:
            path = self.folder / f"{name}.csv"
            if not path.is_file():
                return pd.DataFrame()
            try:
                return pd.read_csv(path, dtype={"config_hash": str, "run_id": str})
            except (OSError, ValueError, pd.errors.ParserError) as exc:
                raise ReflowError(
                    f"cannot import {path}: {exc}. Fix or move the file, then run again."
                ) from exc

        results, probes, layers = read("results"), read("probes"), read("layers")
        if results.empty:
            return
        probes = probes.rename(columns={"bn_index": "norm_index"})
        probes, layers = (f.drop(columns=[k for k in KEY if k in f]) for f in (probes, layers))
        by_run = {
            name: {rid: g.drop(columns="run_id") for rid, g in frame.groupby("run_id")}
            for name, frame in (("probes", probes), ("layers", layers))
            if not frame.empty
        }
        for record in results.to_dict("records"):
            record = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in record.items()
            }
            if isinstance(record.get("config"), str):
                record["config_hash"] = identity_hash_of_stored_config(
                    record["method"], record["repair"], json.loads(record["config"])
                )
            rid = record["run_id"]
            record["run_id"] = run_id(row_key(record))
            aux = {n: by_run.get(n, {}).get(rid) for n in ("probes", "layers")}
            self.add(
                record,
                aux["probes"].to_dict("records") if aux["probes"] is not None else (),
                aux["layers"].to_dict("records") if aux["layers"] is not None else (),
            )
