"""Atomic artifact writes and sha256.

Every file lesionsynth produces (weights, images, manifests, model cards) goes through
:func:`atomic_write_bytes` / :func:`atomic_writer`: it is written to a temporary file in the same folder,
flushed and fsynced, then renamed over the target. A crash leaves either the old file or the new one,
never a half-written file that a later run would mistake for a finished one (balance and training resume
rely on this: "the file exists" means "the file is complete").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from models.errors import StorageError

#: Write failures that are the storage's, not the program's: reported as StorageError, which says so.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


@contextlib.contextmanager
def storage_guard(what: str, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a storage failure inside the block into StorageError (and remove ``cleanup``, a temp folder).

    Covers OSError and libraries that report the OS error in their message (safetensors: "I/O error:
    File too large (os error 27)").
    """
    try:
        yield
    except Exception as exc:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        code = exc.errno if isinstance(exc, OSError) else None
        if code is None and (found := re.search(r"os error (\d+)", str(exc))):
            code = int(found.group(1))
        if code in STORAGE_ERRNOS:
            raise storage_error(OSError(code, os.strerror(code)), what) from exc
        raise


def storage_error(exc: OSError, what: str) -> StorageError:
    """A StorageError for ``exc`` (one of STORAGE_ERRNOS) while writing ``what``."""
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large for the filesystem or a size limit",
        errno.EROFS: "the filesystem is read-only",
        errno.EIO: "an I/O error",
    }.get(exc.errno, exc.strerror)
    return StorageError(f"cannot write {what}: {reason}; nothing partial was kept, free space and retry")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit fsync and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            raise storage_error(exc, path.name) from exc
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write ``data`` atomically; return its sha256."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)
    return sha256_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> str:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_text(path: str | Path, text: str) -> str:
    return atomic_write_bytes(path, text.encode())
