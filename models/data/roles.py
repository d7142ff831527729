"""A role split: every image of a dataset gets one role (e.g. test / val / pool / donor / unused), drawn once
with a recorded seed and committed as a CSV, so every experiment on the dataset uses the same test set.

The fractional ``split`` of :mod:`models.data.split` suits one experiment; a benchmark with several
protocols (ISIC 2017's scarce site and donor site) needs more: a fixed test set that no protocol ever
trains on, and named groups that each protocol maps to ``train``/``val``/``test`` or leaves out. The role
file is that record; an experiment config maps roles to splits (:func:`assign_splits`).

Drawing (:func:`draw_roles`): counts are given per role and label; within a label, each role takes the
diagnoses (``stratify`` column) in their dataset proportions (largest remainder), so the test set holds
seborrheic keratoses and nevi as the dataset does. The last role may take ``"rest"``. Deterministic for a
seed and independent of row order.

File format (``docs/evidence/isic2017_split.csv``)::

    image_path,orig_id,label,diagnosis,role

``image_path`` as the dataset's manifest writes it (relative to the manifest's folder).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.artifacts import atomic_write_text
from models.data.manifest import SPLITS, Row
from models.errors import ConfigError

COLUMNS = ("image_path", "orig_id", "label", "diagnosis", "role")
REST = "rest"


def _largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder, ties by name)."""
    whole = sum(weights.values())
    exact = {k: total * w / whole for k, w in weights.items()}
    parts = {k: int(np.floor(v)) for k, v in exact.items()}
    left = total - sum(parts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - parts[k]), k))[:left]:
        parts[k] += 1
    return parts


def draw_roles(
    rows: Sequence[Row],
    counts: Mapping[str, Mapping[str, int | str]],
    seed: int,
    stratify: str = "diagnosis",
) -> dict[str, str]:
    """{image_path: role} for every row.

    ``counts``: {role: {label: n or "rest"}}, in drawing order; a label a role does not name gets none of
    that role. Within a label, rows are shuffled once per stratum (``stratify`` column) with ``seed`` and
    roles take consecutive slices, so changing a later role's count never moves an earlier role's rows.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, dict[str, list[str]]] = {}
    for row in sorted(rows, key=lambda r: r.fields["image_path"]):
        by_label.setdefault(row.label, {}).setdefault(row.fields.get(stratify, ""), []).append(
            row.fields["image_path"]
        )
    assignment: dict[str, str] = {}
    for label, strata in sorted(by_label.items()):
        for paths in strata.values():
            rng.shuffle(paths)
        left = {k: len(v) for k, v in strata.items()}
        taken = dict.fromkeys(strata, 0)
        for role, per_label in counts.items():
            want = per_label.get(label, 0)
            n = sum(left.values()) if want == REST else int(want)
            if n > sum(left.values()):
                raise ConfigError(
                    f"role {role!r} asks for {n} {label!r} rows but only {sum(left.values())} are left"
                )
            if n == 0:
                continue
            parts = _largest_remainder(n, left) if n < sum(left.values()) else dict(left)
            for stratum, k in parts.items():
                for path in strata[stratum][taken[stratum] : taken[stratum] + k]:
                    assignment[path] = role
                taken[stratum] += k
                left[stratum] -= k
        unassigned = sum(left.values())
        if unassigned:
            raise ConfigError(f"{unassigned} {label!r} rows have no role: give the last role 'rest'")
    return assignment


def role_file_text(rows: Sequence[Row], assignment: Mapping[str, str], stratify: str = "diagnosis") -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r.fields["image_path"]):
        path = row.fields["image_path"]
        writer.writerow(
            {
                "image_path": path,
                "orig_id": row.fields.get("orig_id", ""),
                "label": row.label,
                "diagnosis": row.fields.get(stratify, ""),
                "role": assignment[path],
            }
        )
    return buf.getvalue()


def write_role_file(path: Path, rows: Sequence[Row], assignment: Mapping[str, str]) -> Path:
    atomic_write_text(path, role_file_text(rows, assignment))
    return path


@dataclass(frozen=True)
class RoleFile:
    """A parsed role file: one entry per image, checked for duplicates."""

    path: Path
    entries: tuple[dict[str, str], ...]

    @property
    def roles(self) -> dict[str, str]:
        return {e["image_path"]: e["role"] for e in self.entries}

    def count(self, role: str, label: str | None = None) -> int:
        return sum(e["role"] == role and (label is None or e["label"] == label) for e in self.entries)

    def summary(self) -> Counter[tuple[str, str]]:
        return Counter((e["role"], e["label"]) for e in self.entries)


def read_role_file(path: Path) -> RoleFile:
    if not path.is_file():
        raise ConfigError(f"split file not found: {path}")
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    missing = [c for c in ("image_path", "label", "role") if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"split file {path.name} lacks column(s) {', '.join(missing)}")
    entries = tuple(dict(r) for r in reader)
    seen: dict[str, str] = {}
    twice = []
    for number, e in enumerate(entries, start=2):
        if e["image_path"] in seen:
            twice.append(f"row {number}: {e['image_path']} already has role {seen[e['image_path']]!r}")
        seen[e["image_path"]] = e["role"]
    if twice:
        raise ConfigError(
            f"split file {path.name} lists an image more than once (it could be in test and in training):\n"
            + "\n".join(f"  - {t}" for t in twice[:10])
        )
    return RoleFile(path, entries)


def check_role_mapping(
    role_file: RoleFile, mapping: Mapping[str, str], positive_label: str, min_test_positives: int
) -> None:
    """Refuse a mapping that is not a valid experiment: unknown roles or splits, no test role, or a test
    set with fewer positives than the protocol promises."""
    known = {e["role"] for e in role_file.entries}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ConfigError(
            f"split.roles names role(s) {unknown} that {role_file.path.name} does not hold; "
            f"it holds {sorted(known)}"
        )
    bad = sorted({s for s in mapping.values() if s not in SPLITS})
    if bad:
        raise ConfigError(f"split.roles maps to {bad}; a role maps to one of {', '.join(SPLITS)}")
    test_roles = [r for r, s in mapping.items() if s == "test"]
    if not test_roles:
        raise ConfigError("split.roles maps no role to 'test'")
    n_pos = sum(role_file.count(r, positive_label) for r in test_roles)
    if n_pos < min_test_positives:
        raise ConfigError(
            f"the test set holds {n_pos} {positive_label!r} images, below split.min_test_positives = "
            f"{min_test_positives}: too few to decide an AUC difference"
        )


def assign_splits(rows: Sequence[Row], role_file: RoleFile, mapping: Mapping[str, str]) -> list[Row]:
    """The rows whose role is mapped, each with ``split`` and ``role`` fields set (others are left out).

    Every manifest row must be in the role file with the same label: a row the file does not know could be
    a test image under another name.
    """
    roles = role_file.roles
    labels = {e["image_path"]: e["label"] for e in role_file.entries}
    problems = []
    kept = []
    for row in rows:
        path = row.fields["image_path"]
        if path not in roles:
            problems.append(f"row {row.number}: not in {role_file.path.name}")
        elif labels[path] != row.label:
            problems.append(f"row {row.number}: label {row.label!r}, the split file says {labels[path]!r}")
        elif roles[path] in mapping:
            row.fields["role"] = roles[path]
            row.fields["split"] = mapping[roles[path]]
            kept.append(row)
    if problems:
        raise ConfigError(
            f"the manifest does not match {role_file.path.name} ({len(problems)} rows):\n"
            + "\n".join(f"  - {p}" for p in problems[:10])
        )
    return kept


def check_test_not_trained(rows: Sequence[Row]) -> None:
    """Refuse a split whose test set shares an image (same bytes, any name) with train or val.

    A public dataset can hold one image under two identifiers; a role file checked by name alone would let
    such a pair sit in test and in training.
    """
    first: dict[str, Row] = {}
    clashes = []
    for row in sorted(rows, key=lambda r: r.split != "test"):  # test rows first
        digest = hashlib.sha256(row.image_file.read_bytes()).hexdigest()
        other = first.setdefault(digest, row)
        if other is not row and other.split == "test" and row.split != "test":
            clashes.append(
                f"row {row.number} ({row.split}) has the same image bytes as test row {other.number}"
            )
    if clashes:
        raise ConfigError(
            "a test image is also in training or validation:\n" + "\n".join(f"  - {c}" for c in clashes[:10])
        )
