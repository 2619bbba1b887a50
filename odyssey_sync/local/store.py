"""SQLite state of the local server (stdlib :mod:`sqlite3`, WAL mode).

One :class:`Store` per running server. Its single connection is opened with
``check_same_thread=False`` and every statement runs under one lock: the
server loop thread does nearly all access, but test helpers
(``LocalOdyssey.wait_for_recording``) read from the caller's thread. Writes
are tiny autocommit statements, so holding the lock never blocks the loop for
long.

Tables: ``meta`` (server secret), ``api_keys`` (hashes only), ``allocations``,
``streams`` (live streams and simulation outputs alike), ``stream_events``
(the event log a recording is rendered from), ``jobs`` (simulation jobs) and
``scripts`` (uploaded simulation scripts).

Times are stored twice where they are both shown and computed with: ISO-8601
text for the wire and a float UNIX time for arithmetic.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Row", "Store", "iso_now", "to_iso"]

Row = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    key_id TEXT UNIQUE NOT NULL,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS allocations (
    session_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    created_ts REAL NOT NULL,
    connected INTEGER NOT NULL DEFAULT 0,
    closed_ts REAL,
    close_reason TEXT
);
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    session_id TEXT,
    job_id TEXT,
    script_index INTEGER NOT NULL DEFAULT 0,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    fps REAL NOT NULL,
    prompt TEXT NOT NULL,
    applied_prompt TEXT NOT NULL,
    portrait INTEGER NOT NULL,
    broadcast INTEGER NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    started_ts REAL NOT NULL,
    ended_at TEXT,
    ended_ts REAL,
    frame_count INTEGER,
    duration_seconds REAL,
    media_key TEXT UNIQUE NOT NULL,
    has_input_image INTEGER NOT NULL DEFAULT 0,
    render_state TEXT NOT NULL DEFAULT 'live',
    render_error TEXT,
    has_thumbnail INTEGER NOT NULL DEFAULT 0,
    has_preview INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS streams_by_key ON streams (key_id, started_ts);
CREATE TABLE IF NOT EXISTS stream_events (
    stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    frame INTEGER NOT NULL,
    prompt TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_ts REAL NOT NULL,
    dispatched_at TEXT,
    started_at TEXT,
    completed_at TEXT,
    error_message TEXT,
    assigned_region TEXT,
    retry_count INTEGER NOT NULL DEFAULT 0,
    portrait INTEGER NOT NULL,
    script_url TEXT,
    scripts_json TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_id, created_ts);
CREATE TABLE IF NOT EXISTS scripts (
    script_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

#: statuses that are still moving (PROTOCOL §3.9 "active")
ACTIVE_JOB_STATUSES = ("pending", "dispatched", "processing")


def to_iso(ts: float) -> str:
    """UNIX time → ISO-8601 UTC text with a ``Z``-free ``+00:00`` offset."""
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat()


def iso_now() -> str:
    return _dt.datetime.now(tz=_dt.timezone.utc).isoformat()


class Store:
    """The server's SQLite database (thread-safe; short statements under one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock, contextlib.suppress(sqlite3.Error):  # closing twice is harmless
            self._db.close()

    # -- low level ----------------------------------------------------------
    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            cur = self._db.execute(sql, params)
            return cur.rowcount

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [dict(r) for r in rows]

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # -- meta ---------------------------------------------------------------
    def meta_get(self, name: str) -> bytes | None:
        value = self._scalar("SELECT value FROM meta WHERE name = ?", (name,))
        return bytes(value) if value is not None else None

    def meta_set_default(self, name: str, value: bytes) -> bytes:
        """Store ``value`` unless ``name`` exists; return the stored value."""
        self._exec("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, value))
        stored = self.meta_get(name)
        assert stored is not None
        return stored

    # -- API keys -----------------------------------------------------------
    def add_key(self, key_hash: str, key_id: str, label: str) -> None:
        self._exec("INSERT OR IGNORE INTO api_keys (key_hash, key_id, label, created_at) "
                   "VALUES (?, ?, ?, ?)", (key_hash, key_id, label, iso_now()))

    def key_hashes(self) -> dict[str, str]:
        """key_hash → key_id of every known key."""
        return {r["key_hash"]: r["key_id"] for r in self._all("SELECT * FROM api_keys")}

    # -- allocations --------------------------------------------------------
    def add_allocation(self, session_id: str, key_id: str, ts: float) -> None:
        self._exec("INSERT INTO allocations (session_id, key_id, created_ts) VALUES (?, ?, ?)",
                   (session_id, key_id, ts))

    def close_allocation(self, session_id: str, ts: float, reason: str) -> None:
        self._exec("UPDATE allocations SET closed_ts = ?, close_reason = ? "
                   "WHERE session_id = ? AND closed_ts IS NULL", (ts, reason, session_id))

    def mark_allocation_connected(self, session_id: str) -> None:
        self._exec("UPDATE allocations SET connected = 1 WHERE session_id = ?", (session_id,))

    def close_all_allocations(self, ts: float, reason: str) -> int:
        return self._exec("UPDATE allocations SET closed_ts = ?, close_reason = ? "
                          "WHERE closed_ts IS NULL", (ts, reason))

    # -- streams ------------------------------------------------------------
    def add_stream(self, **fields: Any) -> None:
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self._exec(f"INSERT INTO streams ({names}) VALUES ({marks})", list(fields.values()))

    def update_stream(self, stream_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{name} = ?" for name in fields)
        self._exec(f"UPDATE streams SET {sets} WHERE stream_id = ?",
                   [*fields.values(), stream_id])

    def stream(self, stream_id: str) -> Row | None:
        return self._one("SELECT * FROM streams WHERE stream_id = ?", (stream_id,))

    def streams_of_key(self, key_id: str, limit: int, offset: int) -> tuple[list[Row], int]:
        total = int(self._scalar("SELECT COUNT(*) FROM streams WHERE key_id = ?", (key_id,)))
        rows = self._all("SELECT * FROM streams WHERE key_id = ? "
                         "ORDER BY started_ts DESC, rowid DESC LIMIT ? OFFSET ?",
                         (key_id, limit, offset))
        return rows, total

    def streams_of_job(self, job_id: str) -> list[Row]:
        return self._all("SELECT * FROM streams WHERE job_id = ? ORDER BY script_index",
                         (job_id,))

    def streams_in_state(self, states: Iterable[str]) -> list[Row]:
        wanted = list(states)
        marks = ", ".join("?" for _ in wanted)
        return self._all(f"SELECT * FROM streams WHERE render_state IN ({marks})", wanted)

    def open_streams(self) -> list[Row]:
        """Streams without an end time (live, or cut off by a crash)."""
        return self._all("SELECT * FROM streams WHERE ended_ts IS NULL")

    def recent_streams(self, limit: int) -> list[Row]:
        return self._all("SELECT * FROM streams ORDER BY started_ts DESC LIMIT ?", (limit,))

    def streamed_seconds(self, key_id: str, now: float) -> float:
        """Seconds of live streaming a key has used (ended and still-live streams)."""
        value = self._scalar(
            "SELECT COALESCE(SUM(CASE WHEN ended_ts IS NULL THEN ? - started_ts "
            "ELSE COALESCE(duration_seconds, ended_ts - started_ts) END), 0) "
            "FROM streams WHERE key_id = ? AND job_id IS NULL", (now, key_id))
        return float(value or 0.0)

    # -- stream events ------------------------------------------------------
    def add_event(self, stream_id: str, kind: str, frame: int, prompt: str | None) -> None:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(seq), -1) FROM stream_events "
                                   "WHERE stream_id = ?", (stream_id,)).fetchone()
            self._db.execute("INSERT INTO stream_events (stream_id, seq, kind, frame, prompt, at) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (stream_id, int(row[0]) + 1, kind, frame, prompt, iso_now()))

    def events(self, stream_id: str) -> list[Row]:
        return self._all("SELECT kind, frame, prompt, at FROM stream_events "
                         "WHERE stream_id = ? ORDER BY seq", (stream_id,))

    # -- jobs ---------------------------------------------------------------
    def add_job(self, **fields: Any) -> None:
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self._exec(f"INSERT INTO jobs ({names}) VALUES ({marks})", list(fields.values()))

    def update_job(self, job_id: str, *, only_if_status: Sequence[str] | None = None,
                   **fields: Any) -> bool:
        """Update a job; with ``only_if_status`` only when its status is one of them.

        Returns whether a row changed (the compare-and-set that makes cancel
        race-free against the job runner).
        """
        sets = ", ".join(f"{name} = ?" for name in fields)
        params: list[Any] = [*fields.values(), job_id]
        sql = f"UPDATE jobs SET {sets} WHERE job_id = ?"
        if only_if_status is not None:
            sql += f" AND status IN ({', '.join('?' for _ in only_if_status)})"
            params.extend(only_if_status)
        return self._exec(sql, params) > 0

    def job(self, job_id: str) -> Row | None:
        return self._one("SELECT * FROM jobs WHERE job_id = ?", (job_id,))

    def jobs_of_key(self, key_id: str, *, status: str | None, active: bool | None,
                    limit: int, offset: int) -> tuple[list[Row], int]:
        where = ["key_id = ?"]
        params: list[Any] = [key_id]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if active is not None:
            marks = ", ".join("?" for _ in ACTIVE_JOB_STATUSES)
            where.append(f"status {'IN' if active else 'NOT IN'} ({marks})")
            params.extend(ACTIVE_JOB_STATUSES)
        clause = " AND ".join(where)
        total = int(self._scalar(f"SELECT COUNT(*) FROM jobs WHERE {clause}", params))
        rows = self._all(f"SELECT * FROM jobs WHERE {clause} "
                         "ORDER BY created_ts DESC, rowid DESC LIMIT ? OFFSET ?",
                         [*params, limit, offset])
        return rows, total

    def jobs_in_status(self, statuses: Iterable[str]) -> list[Row]:
        wanted = list(statuses)
        marks = ", ".join("?" for _ in wanted)
        return self._all(f"SELECT * FROM jobs WHERE status IN ({marks})", wanted)

    # -- uploaded scripts ---------------------------------------------------
    def add_script(self, script_id: str, key_id: str, body: str) -> None:
        self._exec("INSERT INTO scripts (script_id, key_id, body, created_at) VALUES (?, ?, ?, ?)",
                   (script_id, key_id, body, iso_now()))

    def script(self, script_id: str) -> Row | None:
        return self._one("SELECT * FROM scripts WHERE script_id = ?", (script_id,))
