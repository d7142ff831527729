"""CSV manifests: ``image_path,mask_path,label`` (+ any extra columns), paths relative to the manifest.

This is the format of ``../shared/data/ph2/manifest_*.csv``. Loading validates every row and raises one
:class:`~models.errors.ManifestError` listing *all* bad rows with their row numbers (the header is row 1,
the first record row 2, as a spreadsheet shows them), so a user fixes the file once, not once per row.

Extra columns are kept and written back unchanged. The optional ``split`` column (train/val/test) is added
by :mod:`models.data.split`; anything trained reads only ``train`` (and ``val`` for model selection) rows
through :meth:`Manifest.rows_in`, never ``test``.

``mask_path`` may be empty on rows that need no mask (normal rows that ``balance --masks proposed|auto``
gives a proposed mask); whatever needs a row's mask (training on lesion regions, ``--masks own``) says so
with the row numbers (:meth:`Manifest.require_masks`, :meth:`Row.load`). The optional ``roi_mask_path``
column names a region-of-interest mask: where a proposed lesion may lie (models/masks/).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.artifacts import atomic_write_text
from models.data.images import decode_image, decode_mask
from models.errors import ConfigError, LesionsynthError, ManifestError

REQUIRED_COLUMNS = ("image_path", "mask_path", "label")
SPLITS = ("train", "val", "test")


@dataclass
class Row:
    """One manifest record. ``number`` is its 1-based line in the CSV (header = 1)."""

    number: int
    fields: dict[str, str]
    root: Path

    @property
    def label(self) -> str:
        return self.fields["label"]

    @property
    def split(self) -> str | None:
        return self.fields.get("split") or None

    @property
    def image_file(self) -> Path:
        return self.root / self.fields["image_path"]

    @property
    def mask_file(self) -> Path:
        return self.root / self.fields["mask_path"]

    @property
    def has_mask(self) -> bool:
        return bool(self.fields.get("mask_path", "").strip())

    @property
    def roi_file(self) -> Path | None:
        """The region-of-interest mask (``roi_mask_path`` column), or None."""
        rel = self.fields.get("roi_mask_path", "").strip()
        return self.root / rel if rel else None

    def load(self, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (image (H, W, 3) uint8, mask (H, W) bool)."""
        if not self.has_mask:
            raise ConfigError(
                f"row {self.number} (label {self.label!r}) has no mask (empty mask_path) but this step needs "
                "one; balance can propose masks for rows without one (--masks proposed or auto)"
            )
        return (
            decode_image(self.image_file, max_pixels=max_pixels, role=f"row {self.number} image"),
            decode_mask(self.mask_file, max_pixels=max_pixels, role=f"row {self.number} mask"),
        )


@dataclass
class Manifest:
    path: Path
    columns: list[str]
    rows: list[Row] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    def labels(self) -> list[str]:
        return sorted({r.label for r in self.rows})

    def has_split(self) -> bool:
        return "split" in self.columns and all(r.split in SPLITS for r in self.rows)

    def rows_in(self, split: str, label: str | None = None) -> list[Row]:
        """Rows of one split (and optionally one label). Requires the ``split`` column."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if not self.has_split():
            raise ConfigError(
                f"{self.path.name} has no complete 'split' column: run "
                "`lesionsynth data split --manifest ...` first (training never reads unsplit data, so the "
                "test rows stay unseen)"
            )
        return [r for r in self.rows if r.split == split and (label is None or r.label == label)]

    def require_label(self, label: str) -> None:
        if label not in self.labels():
            raise ConfigError(
                f"label {label!r} does not occur in the manifest; labels present: {', '.join(self.labels())}"
            )

    def require_masks(self, rows: Iterable[Row], why: str) -> None:
        """ManifestError listing every row of ``rows`` with an empty ``mask_path``."""
        missing = [r.number for r in rows if not r.has_mask]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise ManifestError(
                [f"rows {shown} have no mask (empty mask_path); {why}"], header=f"manifest {self.path.name}"
            )

    def sha256(self) -> str:
        """Hash of the manifest file's bytes: recorded in model cards to tie a model to its data."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def to_csv(self, columns: Sequence[str] | None = None, rows: Iterable[Row] | None = None) -> str:
        cols = list(columns or self.columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows if rows is not None else self.rows:
            writer.writerow({c: row.fields.get(c, "") for c in cols})
        return buf.getvalue()

    def save(self, path: Path | None = None) -> Path:
        """Write atomically (to ``path`` or over the original).

        Saved elsewhere (e.g. a split of the read-only shared PH2 manifest into a run folder), the
        image and mask paths are rewritten relative to the new location so they still resolve.
        """
        target = Path(path or self.path)
        if target.resolve().parent != self.root.resolve():
            for row in self.rows:
                for column in ("image_path", "mask_path", "roi_mask_path"):
                    if not row.fields.get(column, "").strip():
                        continue  # an optional file: stays empty
                    file = row.root / row.fields[column]
                    row.fields[column] = Path(
                        os.path.relpath(file.resolve(), target.resolve().parent)
                    ).as_posix()
                row.root = target.parent
            self.path = target
        atomic_write_text(target, self.to_csv())
        return target


def read_manifest(path: str | Path) -> Manifest:
    """Parse the CSV and check its columns, without opening any image (fast)."""
    path = Path(path)
    if not path.is_file():
        raise LesionsynthError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LesionsynthError(f"manifest {path.name} is not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(
            [
                f"missing column(s) {', '.join(missing)}; the header must include {', '.join(REQUIRED_COLUMNS)}"
            ],
            header=f"manifest {path.name}",
        )
    rows = [
        Row(number=i + 2, fields={k: (v or "") for k, v in rec.items() if k is not None}, root=path.parent)
        for i, rec in enumerate(reader)
    ]
    if not rows:
        raise ManifestError(["no records after the header"], header=f"manifest {path.name}")
    return Manifest(path=path, columns=columns, rows=rows)


def validate_row(row: Row, labels: Sequence[str] | None, max_pixels: int | None = None) -> list[str]:
    """Every problem with one row, as human-readable strings prefixed with the row number."""
    problems: list[str] = []
    where = f"row {row.number}"
    label = row.label.strip()
    if not label:
        problems.append(f"{where}: empty label")
    elif labels is not None and label not in labels:
        problems.append(f"{where}: unknown label {label!r} (expected one of {', '.join(labels)})")
    if "split" in row.fields and row.fields["split"] and row.fields["split"] not in SPLITS:
        problems.append(f"{where}: unknown split {row.fields['split']!r} (expected train, val or test)")
    image = mask = roi = None
    for column, loader in (
        ("image_path", decode_image),
        ("mask_path", decode_mask),
        ("roi_mask_path", decode_mask),
    ):
        rel = row.fields.get(column, "").strip()
        if not rel:
            if column == "image_path":
                problems.append(f"{where}: empty {column}")
            continue  # mask_path may be empty (a proposal is made where one is needed); roi is optional
        file = row.root / rel
        if not file.is_file():
            problems.append(f"{where}: {column} file is missing")
            continue
        try:
            loaded = loader(file, max_pixels=max_pixels, role=column)
        except LesionsynthError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if column == "image_path":
            image = loaded
        elif column == "mask_path":
            mask = loaded
        else:
            roi = loaded
    if image is not None and roi is not None:
        if roi.shape != image.shape[:2]:
            problems.append(
                f"{where}: roi mask is {roi.shape[1]}x{roi.shape[0]} but image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        elif not roi.any():
            problems.append(f"{where}: roi mask is empty (no pixel > 127)")
    if image is not None and mask is not None:
        if mask.shape != image.shape[:2]:
            problems.append(
                f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        elif not mask.any():
            problems.append(f"{where}: mask is empty (no pixel > 127)")
    return problems


def load_manifest(
    path: str | Path,
    labels: Sequence[str] | None = None,
    *,
    check_files: bool = True,
    max_pixels: int | None = None,
    progress: bool = False,
) -> Manifest:
    """Read and validate a manifest; raise one ManifestError listing every bad row.

    Args:
        labels: the labels the caller understands; a row with any other label is reported. ``None``
            accepts any non-empty label.
        check_files: decode every image and mask (catches missing, unreadable and truncated files, size
            mismatches and empty masks). Costs one full decode per file.
    """
    manifest = read_manifest(path)
    problems: list[str] = []
    for row in tqdm(manifest.rows, desc="checking manifest", unit="row", disable=not progress):
        if check_files:
            problems.extend(validate_row(row, labels, max_pixels))
        elif not row.label.strip() or (labels is not None and row.label not in labels):
            problems.append(f"row {row.number}: unknown label {row.label!r}")
    if problems:
        raise ManifestError(problems, header=f"manifest {manifest.path.name}")
    return manifest
