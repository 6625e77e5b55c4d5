"""Shard files: a task's rows as one JSON file, written atomically by the job that ran it, so a
preempted or requeued job either finds its shard complete (and returns at once) or rewrites it;
`merge_shards` folds them into the store, skipping rows the store already has finished."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from reflow.atomic import atomic_write
from reflow.errors import ReflowError
from reflow.execute import RowResult
from reflow.outcomes import Outcomes
from reflow.plan import Task, task_id
from reflow.results import KEY, ResultStore, row_key


def shard_name(task: Task) -> str:
    """Stable file name of a task's shard: a digest of its row keys."""
    return task_id(task) + ".json"


def write_shard(path: Path, rows: list[RowResult]) -> None:
    records = [
        {**asdict(r), "outcomes": r.outcomes.to_json() if r.outcomes else None} for r in rows
    ]
    atomic_write(path, lambda f: json.dump(records, f))


def _row_result(record: dict) -> RowResult:
    outcomes = record.pop("outcomes", None)
    return RowResult(**record, outcomes=Outcomes.from_json(outcomes) if outcomes else None)


def read_shard(path: Path) -> list[RowResult]:
    """A shard's rows; a file that is not one (damaged, foreign, rows without their key) is a
    one-line error naming it."""
    try:
        records = json.loads(Path(path).read_text())
        results = [_row_result(r) for r in records]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ReflowError(
            f"shard {path} is not a reflow shard ({type(exc).__name__}: {exc}); move it away"
        ) from None
    for result in results:
        missing = [k for k in (*KEY, "run_id") if k not in result.row]
        if missing:
            raise ReflowError(
                f"shard {path} has a row without {', '.join(missing)}; move the file away"
            )
    return results


def read_shards(folder: Path) -> dict[Path, list[RowResult]]:
    """Every shard in ``folder``, read and checked; no shard at all is an error."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        raise ReflowError(
            f"no shard files in {folder} (looked for *.json); nothing to merge. Shards are "
            "written by `--executor submitit`; pass --shards if they are elsewhere"
        )
    return {path: read_shard(path) for path in paths}


def merge_shards(
    store: ResultStore, folder: Path, shards: dict[Path, list[RowResult]] | None = None
) -> tuple[int, int]:
    """Add every shard row not already finished in ``store``; returns (added, skipped)."""
    folder = Path(folder)
    added = skipped = 0
    if shards is None:
        if not folder.is_dir():
            return 0, 0
        shards = {path: read_shard(path) for path in sorted(folder.glob("*.json"))}
    finished = store.finished()
    for rows in shards.values():
        for result in rows:
            key = row_key(result.row)
            if key in finished:
                skipped += 1
                continue
            store.add(result.row, result.probes, result.layers, result.outcomes)
            if result.row.get("error") is None:
                finished.add(key)
            added += 1
    return added, skipped
