"""Job records in SQLite: the training service's memory, shared with the job processes.

One database file (``jobs.db`` in the service's data directory) in WAL mode: the service reads while a
job's worker process writes its progress, and a crash of either leaves the last committed state. Every
write is a short transaction (``BEGIN IMMEDIATE``), so writers from several processes queue on the busy
timeout instead of failing.

States::

    queued ──> running ──> succeeded | failed | cancelled
      │           └──(service restarted)──> queued again (resumable, attempts left) | interrupted
      │                                         | running still (adopted: its Kubernetes Job runs on)
      └──> cancelled

A job is never lost: it is created before it is acknowledged, and a job the previous service process
left "running" is adopted, requeued or marked interrupted with the reason by
:meth:`JobStore.recover_after_restart`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import ConfigError, NotFoundError

SCHEMA_VERSION = 1
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
MAX_ERROR_CHARS = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    type             TEXT NOT NULL,
    state            TEXT NOT NULL,
    params_json      TEXT NOT NULL,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    progress         REAL NOT NULL DEFAULT 0,
    stage            TEXT NOT NULL DEFAULT '',
    error            TEXT,
    result_json      TEXT,
    attempts         INTEGER NOT NULL DEFAULT 1,
    pid              INTEGER,
    updated_at       REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
"""


class UnknownJobError(NotFoundError):
    """No job has this id (a REST 404 / gRPC NOT_FOUND, not a bad request)."""


@dataclass(frozen=True)
class JobRecord:
    id: str
    type: str
    state: str
    params_json: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float
    stage: str
    error: str | None
    result_json: str | None
    #: 1 for the first run; +1 each time the job is requeued after a service restart.
    attempts: int
    pid: int | None
    updated_at: float
    cancel_requested: bool

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    @property
    def result(self) -> dict | None:
        return json.loads(self.result_json) if self.result_json else None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "params": self.params,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": self.progress,
            "stage": self.stage,
            "error": self.error,
            "result": self.result,
            "attempts": self.attempts,
        }


def one_line(message: str) -> str:
    """Errors are stored as one line (multi-line messages such as a manifest's problems joined)."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class JobStore:
    """Thread-safe (one connection per thread) and multi-process-safe access to the job database."""

    def __init__(self, db_path: str | Path, busy_timeout_s: float = 30.0):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._init_schema()

    # -- connections ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=self._busy_ms / 1000, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            db.execute("PRAGMA journal_mode = WAL")
            # FULL, not WAL's usual NORMAL: an acknowledged submission must survive a power loss, not only
            # a killed process; job writes are a few per second at most, so the fsync per commit is cheap.
            db.execute("PRAGMA synchronous = FULL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at its start (BEGIN IMMEDIATE) so it never fails half-way on a lock."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _init_schema(self) -> None:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row["version"] > SCHEMA_VERSION:
                raise ConfigError(
                    f"the job database {self.db_path} has schema version {row['version']}, newer than this "
                    f"lesionsynth understands ({SCHEMA_VERSION}); run a newer service or use another data directory"
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- reading ----------------------------------------------------------------------------------

    @staticmethod
    def _record(row: sqlite3.Row | None) -> JobRecord | None:
        if row is None:
            return None
        values = dict(row)
        values["cancel_requested"] = bool(values["cancel_requested"])
        return JobRecord(**values)

    def get(self, job_id: str) -> JobRecord | None:
        row = self._connect().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._record(row)

    def require(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job is None:
            raise UnknownJobError(f"no job with id {job_id!r}")
        return job

    def list(self, state: str | None = None, type: str | None = None, limit: int = 100) -> list[JobRecord]:  # noqa: A002
        """Newest first."""
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if type:
            where.append("type = ?")
            args.append(type)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        rows = self._connect().execute(sql, (*args, max(1, int(limit)))).fetchall()
        return [self._record(r) for r in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by (type, state), for metrics."""
        rows = self._connect().execute("SELECT type, state, COUNT(*) AS n FROM jobs GROUP BY type, state")
        return {(r["type"], r["state"]): r["n"] for r in rows}

    # -- writing ----------------------------------------------------------------------------------

    def create(self, type: str, params: dict) -> JobRecord:  # noqa: A002
        job_id, now = uuid.uuid4().hex, time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, type, state, params_json, created_at, updated_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?)",
                (job_id, type, json.dumps(params, sort_keys=True), now, now),
            )
        return self.require(job_id)

    def claim_next_queued(self) -> JobRecord | None:
        """The oldest queued job, now marked running (atomically: two callers never get the same job)."""
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, pid = NULL, progress = 0, updated_at = ? "
                "WHERE id = ?",
                (now, now, row["id"]),
            )
        return self.get(row["id"])

    def set_running(self, job_id: str, pid: int | None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET pid = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                (pid, time.time(), job_id),
            )

    def update_progress(self, job_id: str, stage: str, progress: float) -> None:
        progress = min(max(float(progress), 0.0), 1.0)
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, progress = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                (stage[:200], progress, time.time(), job_id),
            )

    def finish(self, job_id: str, state: str, error: str | None = None, result: dict | None = None) -> bool:
        """Record a job's end; False (and no change) when it had already ended."""
        if state not in TERMINAL:
            raise ValueError(f"finish() takes a final state ({', '.join(TERMINAL)}), not {state!r}")
        now = time.time()
        with self._write() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, error = ?, result_json = ?, finished_at = ?, updated_at = ?, "
                "progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (
                    state,
                    one_line(error) if error else None,
                    json.dumps(result, sort_keys=True) if result is not None else None,
                    now,
                    now,
                    state,
                    job_id,
                ),
            )
            return cursor.rowcount == 1

    def request_cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled now; a running one is flagged for the scheduler to stop; a finished
        one is returned unchanged (cancelling is idempotent)."""
        self.require(job_id)
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', error = 'cancelled before it started', finished_at = ?, "
                "updated_at = ?, cancel_requested = 1 WHERE id = ? AND state = 'queued'",
                (now, now, job_id),
            )
            db.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? AND state = 'running'",
                (now, job_id),
            )
        return self.require(job_id)

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> bool:
        """Record that a job was stopped because it was cancelled."""
        return self.finish(job_id, "cancelled", error=reason)

    def recover_after_restart(
        self, resumable: set[str], max_attempts: int = 3, adopted: frozenset[str] | set[str] = frozenset()
    ) -> list[str]:
        """Requeue or interrupt every job a previous service process left running; return their ids.

        Call it once at service start, after taking the data directory lock (so no live service owns
        these jobs) and after making sure their old processes are gone. Jobs in ``adopted`` are still
        running where the executor put them (Kubernetes) and now watched by this service: left as they
        are, and not counted as another attempt.
        """
        now = time.time()
        touched = []
        with self._write() as db:
            for row in db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
                job = self._record(row)
                if job.id in adopted:
                    continue
                touched.append(job.id)
                if job.cancel_requested:
                    state, stage, error = (
                        "cancelled",
                        job.stage,
                        "cancelled by request (the service restarted)",
                    )
                elif job.type not in resumable:
                    state, stage = "interrupted", job.stage
                    error = f"the service stopped while the job ran, and {job.type} jobs cannot be resumed"
                elif job.attempts >= max_attempts:
                    state, stage = "interrupted", job.stage
                    error = (
                        f"the service stopped while the job ran, {job.attempts} times; not resuming it again "
                        "(submit it anew to retry)"
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET state = 'queued', attempts = attempts + 1, pid = NULL, "
                        "stage = 'resuming after restart', updated_at = ? WHERE id = ?",
                        (now, job.id),
                    )
                    continue
                db.execute(
                    "UPDATE jobs SET state = ?, stage = ?, error = ?, finished_at = ?, pid = NULL, updated_at = ? "
                    "WHERE id = ?",
                    (state, stage, error, now, now, job.id),
                )
        return touched
