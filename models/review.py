"""A person's review of a balanced dataset's synthetic images: the manifest's ``review`` column (torch-free).

``lesionsynth balance`` writes ``manifest.csv`` with one row per synthetic image (``synthetic == 1``).
A reviewer (the training service's /review page) marks each synthetic row ``accepted`` or ``rejected``;
an empty cell means unreviewed. Real rows never carry a decision.

Training reads it through :func:`keeps_row`: a rejected synthetic image is never trained on; an unreviewed
one is used unless ``require_review`` (train-classifier ``--require-review``, the experiment's
``classifier.require_review``) asks for accepted images only.

Decisions are written with :func:`set_review`: the whole manifest is rewritten atomically
(models/artifacts.py) under a lock on the folder, so two reviewers never lose each other's clicks and a
reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from models.data.manifest import Manifest, Row, read_manifest
from models.errors import ConfigError, LesionsynthError, NotFoundError, ParameterError

COLUMN = "review"
ACCEPTED, REJECTED, UNREVIEWED = "accepted", "rejected", ""
DECISIONS = (ACCEPTED, REJECTED, UNREVIEWED)
#: The columns of a synthetic row that name files a reviewer may look at.
FILE_COLUMNS = ("image_path", "source_image", "mask_path")

_thread_lock = threading.Lock()


def is_synthetic(fields: dict[str, str]) -> bool:
    return fields.get("synthetic", "0") == "1"


def decision_of(fields: dict[str, str]) -> str:
    """accepted | rejected | '' (unreviewed; also for a value nobody wrote through set_review)."""
    value = (fields.get(COLUMN) or "").strip().lower()
    return value if value in (ACCEPTED, REJECTED) else UNREVIEWED


def keeps_row(fields: dict[str, str], require_review: bool = False) -> bool:
    """Whether training may use this row: real rows always; synthetic rows unless rejected, and with
    ``require_review`` only accepted ones."""
    if not is_synthetic(fields):
        return True
    decision = decision_of(fields)
    if decision == REJECTED:
        return False
    return decision == ACCEPTED or not require_review


def manifest_path(dataset: str | Path) -> Path:
    """A balanced folder (its manifest.csv) or the manifest file itself."""
    path = Path(dataset)
    return path / "manifest.csv" if path.is_dir() else path


@dataclass(frozen=True)
class ReviewItem:
    image_path: str
    source_image: str
    mask_path: str
    decision: str
    seed: str
    model_version: str


def _item(row: Row) -> ReviewItem:
    f = row.fields
    return ReviewItem(
        image_path=f.get("image_path", ""),
        source_image=f.get("source_image", ""),
        mask_path=f.get("mask_path", ""),
        decision=decision_of(f),
        seed=f.get("seed", ""),
        model_version=f.get("model_version", ""),
    )


def _read(dataset: str | Path) -> Manifest:
    path = manifest_path(dataset)
    if not path.is_file():
        raise NotFoundError("no manifest.csv in that dataset folder: give a folder written by balance")
    manifest = read_manifest(path)
    if "synthetic" not in manifest.columns:
        raise ConfigError("the manifest has no 'synthetic' column: give a folder written by balance")
    return manifest


def review_items(dataset: str | Path) -> list[dict]:
    """The synthetic rows in manifest order, with their source, mask and decision."""
    return [asdict(_item(r)) for r in _read(dataset).rows if is_synthetic(r.fields)]


def summary(items: list[dict]) -> dict[str, int]:
    counts = {"total": len(items), ACCEPTED: 0, REJECTED: 0, "unreviewed": 0}
    for item in items:
        counts[item["decision"] or "unreviewed"] += 1
    return counts


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer at a time: a thread lock (requests of one process) + flock on the folder (processes)."""
    with _thread_lock:
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def set_review(dataset: str | Path, image_path: str, decision: str) -> dict:
    """Record ``decision`` (accepted | rejected | '' to clear) for the synthetic row of ``image_path``;
    return its item. The manifest is rewritten atomically; every other cell stays as it was."""
    decision = (decision or "").strip().lower()
    if decision not in DECISIONS:
        raise ParameterError("decision must be 'accepted', 'rejected' or '' (unreviewed)")
    path = manifest_path(dataset)
    _read(path)  # NotFoundError / ConfigError before taking a lock on a folder that may not exist
    with _locked(path.parent):
        manifest = _read(path)
        rows = [
            r for r in manifest.rows if is_synthetic(r.fields) and r.fields.get("image_path") == image_path
        ]
        if not rows:
            raise NotFoundError("no synthetic row with that image_path in the manifest")
        if COLUMN not in manifest.columns:
            manifest.columns.append(COLUMN)
        for row in rows:
            row.fields[COLUMN] = decision
        manifest.save()
    return asdict(_item(rows[0]))


def listed_file(dataset: str | Path, name: str) -> Path:
    """The file ``name`` when a synthetic row of the manifest lists it (image, source or mask), resolved;
    anything else (another path, ``..``, a real row's file) is NotFoundError. This is the only way the
    review page reads files."""
    manifest = _read(dataset)
    for row in manifest.rows:
        if is_synthetic(row.fields) and name in (row.fields.get(c) for c in FILE_COLUMNS):
            path = (manifest.root / name).resolve()
            if path.is_file():
                return path
            break
    raise NotFoundError("that file is not listed by a synthetic row of the manifest, or is missing")


def carry_over(previous: Path, text: str) -> str:
    """``text`` (a balanced manifest about to replace ``previous``) with the decisions ``previous`` holds
    for the same synthetic images: rerunning balance keeps the review."""
    import csv
    import io

    if not previous.is_file():
        return text
    try:
        old = read_manifest(previous)
    except (LesionsynthError, OSError):  # an unreadable old manifest has no decisions worth keeping
        return text
    decisions = {
        r.fields.get("image_path"): decision_of(r.fields)
        for r in old.rows
        if is_synthetic(r.fields) and decision_of(r.fields)
    }
    if not decisions:
        return text
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    if COLUMN not in columns:
        columns.append(COLUMN)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rec in reader:
        if is_synthetic(rec) and rec.get("image_path") in decisions:
            rec[COLUMN] = decisions[rec["image_path"]]
        writer.writerow({c: rec.get(c) or "" for c in columns})
    return out.getvalue()
