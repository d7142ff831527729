"""The audit log: an append-only SQLite record of every synthesis (torch-free).

One row per synthetic image made by the synthesis service (REST and gRPC), a balance job or the CLI::

    time            UTC, ISO 8601
    actor           who asked: the bearer token's id (:func:`token_id`: the first 12 hex digits of its
                    sha256, never the secret), "anonymous" when the service runs without auth, "local"
                    for the CLI and jobs
    source          "rest" | "grpc" | "balance-job" | "cli"
    model_version   the synthesizer's version
    seed            the sampler seed
    image_sha256    sha256 of the source image bytes
    mask_sha256     sha256 of the mask bytes ("" when none was given)
    output_sha256   sha256 of the synthetic file's bytes (how ``lesionsynth provenance FILE`` finds it)

No pixels, no file names, no patient data. Rows are only ever inserted: triggers refuse UPDATE and
DELETE, so a row cannot be changed through SQL (the file itself is protected by the filesystem). WAL
mode lets the service and job processes append concurrently.

Where: ``LESIONSYNTH_AUDIT_DB`` (a file path) for the services, jobs and the CLI. Unset, the synthesis
service and the training service's jobs write ``audit.sqlite`` beside the model store (``runs/audit.sqlite``
for the default ``runs/model-store``; where that folder is read-only, a warning says the log is off: set
the variable); the CLI writes only when the variable is set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from models.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "LESIONSYNTH_AUDIT_DB"
FILE_NAME = "audit.sqlite"
SOURCES = ("rest", "grpc", "balance-job", "cli")
LOCAL = "local"
ANONYMOUS = "anonymous"

SCHEMA = """
CREATE TABLE IF NOT EXISTS synthesis (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    model_version TEXT NOT NULL,
    seed INTEGER NOT NULL,
    image_sha256 TEXT NOT NULL,
    mask_sha256 TEXT NOT NULL,
    output_sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS synthesis_output ON synthesis (output_sha256);
CREATE TRIGGER IF NOT EXISTS synthesis_no_update BEFORE UPDATE ON synthesis
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS synthesis_no_delete BEFORE DELETE ON synthesis
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def token_id(token: str | None) -> str:
    """A bearer token's id for the log: the first 12 hex digits of its sha256 ("anonymous" for none)."""
    if not token:
        return ANONYMOUS
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class AuditEntry:
    time: str
    actor: str
    source: str
    model_version: str
    seed: int
    image_sha256: str
    mask_sha256: str
    output_sha256: str

    @classmethod
    def new(cls, **values) -> AuditEntry:
        """An entry stamped now."""
        return cls(time=now(), **values)


COLUMNS = tuple(f.name for f in fields(AuditEntry))


class AuditLog:
    """Append and look up; one connection per call, so it is safe across threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the audit log ({ENV}): {type(exc).__name__}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def record(self, entries: list[AuditEntry]) -> None:
        """Append ``entries`` in one transaction."""
        for e in entries:
            if e.source not in SOURCES:
                raise ValueError(f"audit source must be one of {SOURCES}, got {e.source!r}")
        if not entries:
            return
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    f"INSERT INTO synthesis ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                    [astuple(e) for e in entries],
                )
                db.execute("COMMIT")
            finally:
                db.close()

    def find(self, output_sha256: str) -> list[AuditEntry]:
        """Every synthesis whose output had this sha256, oldest first."""
        db = self._connect()
        try:
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM synthesis WHERE output_sha256 = ? ORDER BY id",
                (output_sha256,),
            ).fetchall()
        finally:
            db.close()
        return [AuditEntry(*row) for row in rows]

    def count(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM synthesis").fetchone()[0])
        finally:
            db.close()


def audit_path(default: str | Path | None = None) -> Path | None:
    """``LESIONSYNTH_AUDIT_DB`` when set, else ``default`` (None: no audit log)."""
    raw = os.environ.get(ENV)
    if raw:
        return Path(raw)
    return None if default is None else Path(default)


def default_beside(model_store: str | Path) -> Path:
    """The services' and jobs' default: ``audit.sqlite`` in the model store's parent folder."""
    return Path(model_store).resolve().parent / FILE_NAME


def open_audit_log(default: str | Path | None = None) -> AuditLog | None:
    """The configured log (:func:`audit_path`), or None when none is configured. A ``LESIONSYNTH_AUDIT_DB``
    that cannot be opened is an error; an unwritable default (e.g. a read-only model store mount) is
    logged as a warning and leaves the log off: set the variable to a writable path there."""
    path = audit_path(default)
    if path is None:
        return None
    try:
        return AuditLog(path)
    except ConfigError:
        if os.environ.get(ENV):
            raise
        log.warning("audit log off: its default location is not writable; set %s to a writable file", ENV)
        return None
