"""Task claims: several drivers on one results folder compute each row once.

Before a driver computes a task it claims it in the store's ``claims`` table, with a lease that a
heartbeat thread renews while the driver lives. Another driver skips a claimed task, works on
the others, and comes back to it: the rows are then finished (it moves on), or the lease has
expired because the claiming driver died (it takes the task over). A driver keeps its claims
until it ends, so rows that ended in an error are not retried by another live driver. A claim
of a process that no longer exists on this host expires at once, so rerunning a killed command
does not wait for its own old leases.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from reflow.plan import Task, family_batches, task_id
from reflow.results import DATABASE, ResultStore

#: Seconds a claim lives without renewal (the heartbeat renews it every third of that).
LEASE_SECONDS = float(os.environ.get("REFLOW_LEASE_SECONDS", "120"))
#: How often a driver that waits for other drivers' tasks looks again.
POLL_SECONDS = float(os.environ.get("REFLOW_CLAIM_POLL_SECONDS", "2"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class TaskClaims:
    """This driver's claims on one store (its own SQLite connection, shared with the heartbeat
    thread under a lock)."""

    def __init__(self, folder: Path, lease: float = LEASE_SECONDS) -> None:
        self.lease = lease
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.db = sqlite3.connect(
            Path(folder) / DATABASE, timeout=60, isolation_level=None, check_same_thread=False
        )
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="reflow-claims", daemon=True)
        self._beat.start()

    def claim(self, tasks: Iterable[str]) -> bool:
        """Claim all of ``tasks`` or none: False when a live driver holds any of them."""
        tasks = list(tasks)
        now = time.time()
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for task in tasks:
                    row = self.db.execute(
                        "SELECT owner, host, pid, expires FROM claims WHERE task = ?", (task,)
                    ).fetchone()
                    if row is not None and row[0] != self.owner and not self._stale(row, now):
                        self.db.execute("ROLLBACK")
                        return False
                self.db.executemany(
                    "INSERT OR REPLACE INTO claims (task, owner, host, pid, expires) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(t, self.owner, self.host, self.pid, now + self.lease) for t in tasks],
                )
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self.held.update(tasks)
        return True

    def _stale(self, row: tuple, now: float) -> bool:
        _, host, pid, expires = row
        return expires < now or (host == self.host and not _alive(int(pid)))

    def release(self, tasks: Iterable[str]) -> None:
        tasks = [t for t in tasks if t in self.held]
        with self._lock:
            self.db.executemany(
                "DELETE FROM claims WHERE task = ? AND owner = ?", [(t, self.owner) for t in tasks]
            )
            self.held.difference_update(tasks)

    def _heartbeat(self) -> None:
        """Renew the leases every third of their life; a busy database is tried again at the
        next beat (two more before the lease runs out), never the end of the thread."""
        while not self._stop.wait(self.lease / 3):
            with self._lock:
                if not self.held:
                    continue
                try:
                    self.db.executemany(
                        "UPDATE claims SET expires = ? WHERE task = ? AND owner = ?",
                        [(time.time() + self.lease, t, self.owner) for t in self.held],
                    )
                except sqlite3.OperationalError:
                    continue

    def close(self) -> None:
        self._stop.set()
        self._beat.join()
        self.release(list(self.held))
        self.db.close()


def claimed_tasks(
    tasks: list[Task], store: ResultStore, claims: TaskClaims, waiting: list[int] | None = None
) -> Iterator[Task]:
    """``tasks`` as this driver claims them, lazily: a task whose rows another driver finished
    is dropped, one another driver holds is deferred and looked at again until it is finished or
    its lease expired. Members of a selection family are claimed together (one shared search).
    ``waiting`` (a one-element list) reports how many tasks wait on other drivers."""
    pending = family_batches(tasks)
    while pending:
        deferred = []
        finished = store.finished()  # once a pass: what other drivers finished meanwhile
        for batch in pending:
            batch = tuple(t for t in batch if not all(s.key in finished for s in t.rows))
            if not batch:
                continue
            if claims.claim(task_id(t) for t in batch):
                # a driver that ended since the pass began may have finished some of these rows
                done = store.finished_among(s.key for t in batch for s in t.rows)
                for task in batch:
                    rows = tuple(s for s in task.rows if s.key not in done)
                    if rows:
                        yield replace(task, rows=rows)
            else:
                deferred.append(batch)
        pending = deferred
        if waiting is not None:
            waiting[:] = [sum(len(b) for b in deferred)]
        if pending:
            time.sleep(POLL_SECONDS)
