"""Shard files: a task's rows as one JSON file, written atomically by the job that ran it, so a
preempted or requeued job either finds its shard complete (and returns at once) or rewrites it;
`merge_shards` folds them into the store, skipping rows the store already has finished."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from reflow.atomic import atomic_write
from reflow.execute import RowResult
from reflow.plan import Task
from reflow.results import ResultStore, row_key


def shard_name(task: Task) -> str:
    """Stable file name of a task's shard: a digest of its row keys."""
    keys = json.dumps([list(spec.key) for spec in task.rows])
    return hashlib.sha256(keys.encode()).hexdigest()[:16] + ".json"


def write_shard(path: Path, rows: list[RowResult]) -> None:
    atomic_write(path, lambda f: json.dump([asdict(r) for r in rows], f))


def read_shard(path: Path) -> list[RowResult]:
    return [RowResult(**r) for r in json.loads(path.read_text())]


def merge_shards(store: ResultStore, folder: Path) -> tuple[int, int]:
    """Add every shard row not already finished in ``store``; returns (added, skipped)."""
    folder = Path(folder)
    added = skipped = 0
    if not folder.is_dir():
        return 0, 0
    finished = store.finished()
    for path in sorted(folder.glob("*.json")):
        for result in read_shard(path):
            key = row_key(result.row)
            if key in finished:
                skipped += 1
                continue
            store.add(result.row, result.probes, result.layers)
            if result.row.get("error") is None:
                finished.add(key)
            added += 1
    return added, skipped
