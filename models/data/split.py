"""Stratified train/val/test split, written as a ``split`` column of the manifest.

The test split is the one thing no model may ever see: the synthesizer trains on ``train`` lesion rows,
classifiers on ``train`` (+ synthetic) with ``val`` for early stopping and threshold choice, and only the
final evaluation reads ``test``. Re-splitting an already split manifest would silently move test rows
into training, so :func:`add_split` refuses unless ``force=True``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from models.data.manifest import Manifest
from models.errors import ConfigError


def stratified_assignment(
    labels: list[str], test_fraction: float, val_fraction: float, seed: int
) -> list[str]:
    """Assign train/val/test per label so each split keeps the label proportions.

    Per label with ``n`` rows: ``round(n * test_fraction)`` go to test and ``round(n * val_fraction)`` to
    val, each at least 1 when the fraction is > 0 and the label has >= 3 rows, so a scarce class still
    appears in every split. Deterministic for a seed and independent of row order within a label.
    """
    if not (0.0 <= test_fraction < 1.0 and 0.0 <= val_fraction < 1.0):
        raise ConfigError("--test-fraction and --val-fraction must each be in [0, 1)")
    if test_fraction + val_fraction >= 1.0:
        raise ConfigError("--test-fraction + --val-fraction must be < 1 so something is left to train on")
    rng = np.random.default_rng(seed)
    assignment = ["train"] * len(labels)
    for label in sorted(set(labels)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == label])
        rng.shuffle(idx)
        n = len(idx)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n >= 3:
            n_test = max(n_test, 1) if test_fraction > 0 else 0
            n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = min(n_test, n - 1)
        n_val = min(n_val, n - 1 - n_test)
        for i in idx[:n_test]:
            assignment[i] = "test"
        for i in idx[n_test : n_test + n_val]:
            assignment[i] = "val"
    return assignment


def add_split(
    manifest: Manifest, *, test_fraction: float, val_fraction: float, seed: int, force: bool = False
) -> Counter[tuple[str, str]]:
    """Add (or, with ``force``, replace) the ``split`` column in place; return counts by (split, label)."""
    if "split" in manifest.columns and not force:
        raise ConfigError(
            "manifest already has a 'split' column; re-splitting can move test rows into training. "
            "Pass --force if you really mean to replace it (and retrain everything trained on the old split)."
        )
    labels = [r.label for r in manifest.rows]
    assignment = stratified_assignment(labels, test_fraction, val_fraction, seed)
    for row, split in zip(manifest.rows, assignment, strict=True):
        row.fields["split"] = split
    if "split" not in manifest.columns:
        manifest.columns.append("split")
    return Counter((r.fields["split"], r.label) for r in manifest.rows)
