"""The span store: one SQLite database in WAL mode, indexed by trace, run, step and time.

    store = SpanStore(Path("spans.db"))
    store.write(rows)                     # from the ingestion thread only
    store.trace_rows(trace_id)            # from any thread
    store.prune(max_age_seconds=..., max_bytes=...)

A span is identified by (trace id, span id): writing it twice keeps the first copy, so an
exporter that re-sends a batch after a tracer restart stores nothing twice. WAL mode lets
readers run while the ingestion thread writes, and a committed batch survives a crash of
the process. Retention removes the oldest spans (by start time past the age limit, then
by arrival while the live data is over the size limit) and gives the pages back to the
file system with an incremental vacuum.

Each thread gets its own connection (sqlite3 connections must not be shared between
threads). This module never blocks the event loop by itself: callers run it in threads.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from weft_tracer.spans import SpanRow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    id INTEGER PRIMARY KEY,
    trace_id BLOB NOT NULL,
    span_id BLOB NOT NULL,
    parent_span_id BLOB NOT NULL,
    name TEXT NOT NULL,
    service TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    run TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_by_run ON spans (run, step) WHERE run != '';
CREATE INDEX IF NOT EXISTS spans_by_start ON spans (start_ns);
"""

_INSERT = (
    "INSERT OR IGNORE INTO spans"
    " (trace_id, span_id, parent_span_id, name, service, start_ns, end_ns, run, step, attempt, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class StoredSpan:
    """A span read back: its OTLP bytes and the service that exported it."""

    body: bytes
    service: str


class SpanStore:
    """Spans in one SQLite file (see the module docstring).

    Args:
        path: The database file; its directory is created. ":memory:" is not supported
            (every thread would get its own empty database).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        connection = self._connection()
        # auto_vacuum must be chosen before the first table exists; on an existing file
        # it is whatever that file was created with.
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        connection.executescript(_SCHEMA)
        # Counted once, then kept by `write` and `prune` (the only writers): a count(*)
        # reads the whole index, and GetTracerStatus asks for it at every poll.
        self._spans = int(connection.execute("SELECT count(*) FROM spans").fetchone()[0])

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a committed batch survives a process crash (not a power
            # loss of the last few transactions), and commits cost no fsync each.
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        """Closes every thread's connection (the WAL is checkpointed by the last one)."""
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def write(self, rows: Sequence[SpanRow]) -> int:
        """Stores `rows` in one transaction; returns how many were new (not duplicates)."""
        connection = self._connection()
        before = connection.total_changes
        connection.execute("BEGIN")
        try:
            connection.executemany(_INSERT, rows)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        new = connection.total_changes - before
        with self._lock:
            self._spans += new
        return new

    def trace_rows(self, trace_ids: Sequence[bytes]) -> list[StoredSpan]:
        """Every stored span of the given traces."""
        if not trace_ids:
            return []
        marks = ",".join("?" * len(trace_ids))
        cursor = self._connection().execute(
            f"SELECT body, service FROM spans WHERE trace_id IN ({marks}) ORDER BY start_ns", list(trace_ids)
        )
        return [StoredSpan(body, service) for body, service in cursor]

    def run_trace_ids(self, run: str) -> list[bytes]:
        """Trace ids of the spans that carry `weft.run = run` (when etcd is not at hand)."""
        cursor = self._connection().execute("SELECT DISTINCT trace_id FROM spans WHERE run = ? AND run != ''", (run,))
        return [row[0] for row in cursor]

    def count(self) -> int:
        """Spans in the store (written or pruned through this object since it opened the file)."""
        return self._spans

    def used_bytes(self) -> int:
        """Bytes of the database holding data (its pages minus the free ones)."""
        connection = self._connection()
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def file_bytes(self) -> int:
        """Size of the database file and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            path = Path(f"{self.path}{suffix}")
            if path.exists():
                total += path.stat().st_size
        return total

    def prune(self, *, max_age_seconds: float, max_bytes: int, now_ns: int | None = None) -> int:
        """Removes spans older than `max_age_seconds`, then the oldest arrivals while the
        data is over `max_bytes` (0 disables either limit). Returns how many were removed."""
        connection = self._connection()
        removed = 0
        if max_age_seconds > 0:
            cutoff = (now_ns if now_ns is not None else time.time_ns()) - int(max_age_seconds * 1e9)
            removed += connection.execute("DELETE FROM spans WHERE start_ns < ?", (cutoff,)).rowcount
        if max_bytes > 0:
            while self.used_bytes() > max_bytes:
                total = self.count() - removed
                if total <= 0:
                    break
                # A tenth at a time: few passes, and never much more than needed.
                batch = max(1, total // 10)
                removed += connection.execute(
                    "DELETE FROM spans WHERE id IN (SELECT id FROM spans ORDER BY id LIMIT ?)", (batch,)
                ).rowcount
        with self._lock:
            self._spans -= removed
        if removed:
            connection.execute("PRAGMA incremental_vacuum")
            # Copy the WAL back and cut it: otherwise the file on disk keeps what was removed.
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
