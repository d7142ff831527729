"""Tests for the synthetic, non-medical demo dataset (models/data/demo.py)."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data.demo import DATASET_NAME, write_demo_dataset
from models.errors import LesionsynthError

COLUMNS = ["image_path", "mask_path", "label", "diagnosis", "dataset"]


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def _load(root: Path, row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(root / row["image_path"]) as img, Image.open(root / row["mask_path"]) as mask:
        assert img.mode == "RGB"
        assert mask.mode == "L"
        return np.asarray(img), np.asarray(mask)


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "out", n_lesion=12, n_normal=20, size=48)


def test_files_and_manifest(demo: Path) -> None:
    root = demo.parent
    assert demo.name == "manifest.csv" and demo.is_file()
    rows = _rows(demo)
    labels = [r["label"] for r in rows]
    assert labels.count("lesion") == 12 and labels.count("normal") == 20 and len(rows) == 32
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)  # interleaved
    for i, row in enumerate(rows):
        assert row["image_path"] == f"images/demo_{i:04d}.png"
        assert row["mask_path"] == f"masks/demo_{i:04d}.png"
        assert row["dataset"] == DATASET_NAME == "lesionsynth-demo (synthetic, non-medical)"
        expected = {"lesion": "demo_irregular_lesion", "normal": "demo_regular_blob"}[row["label"]]
        assert row["diagnosis"] == expected
        image, mask = _load(root, row)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert mask.shape == (48, 48)
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert 0.04 <= (mask > 0).mean() <= 0.46
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"demo_{i:04d}.png" for i in range(32)]
    assert not list(root.rglob("*.tmp"))


def test_blob_inside_image_with_margin(demo: Path) -> None:
    for row in _rows(demo):
        _, mask = _load(demo.parent, row)
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()


def test_readme_says_non_medical(demo: Path) -> None:
    text = (demo.parent / "README.txt").read_text().lower()
    for phrase in ("procedurally generated", "not medical images", "not derived from any patient data"):
        assert phrase in text
    assert "demos and tests only" in text


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_demo_dataset(tmp_path / "a", n_lesion=3, n_normal=5, size=32, seed=7).parent
    b = write_demo_dataset(tmp_path / "b", n_lesion=3, n_normal=5, size=32, seed=7).parent
    c = write_demo_dataset(tmp_path / "c", n_lesion=3, n_normal=5, size=32, seed=8).parent
    files_a, files_b, files_c = _all_bytes(a), _all_bytes(b), _all_bytes(c)
    assert len(files_a) == 2 * 8 + 2
    assert files_a == files_b
    images = [k for k in files_a if k.startswith("images")]
    assert all(files_a[k] != files_c[k] for k in images)


def test_lesion_and_normal_are_distinguishable(demo: Path) -> None:
    stats: dict[str, list[tuple[float, float, float]]] = {"lesion": [], "normal": []}
    for row in _rows(demo):
        image, mask = _load(demo.parent, row)
        inside = image[mask > 0].astype(np.float64)
        stats[row["label"]].append((inside.mean(), (mask > 0).mean(), inside.std(axis=0).mean()))
    lesion, normal = np.array(stats["lesion"]), np.array(stats["normal"])
    brightness, area, colour_std = 0, 1, 2
    assert lesion[:, brightness].mean() < normal[:, brightness].mean() - 20
    assert lesion[:, area].mean() > 1.5 * normal[:, area].mean()
    assert lesion[:, colour_std].mean() > normal[:, colour_std].mean() + 5
    # Separable per sample by brightness alone, not just on average.
    assert lesion[:, brightness].max() < normal[:, brightness].min()


def test_overwrites_previous_demo_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    write_demo_dataset(out, n_lesion=4, n_normal=6, size=24)
    manifest = write_demo_dataset(out, n_lesion=2, n_normal=3, size=24)
    assert len(_rows(manifest)) == 5
    assert len(list((out / "images").iterdir())) == 5 and len(list((out / "masks").iterdir())) == 5


def test_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("my data")
    with pytest.raises(LesionsynthError, match="not a lesionsynth demo"):
        write_demo_dataset(tmp_path, n_lesion=2, n_normal=2, size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(LesionsynthError, match="not a folder"):
        write_demo_dataset(tmp_path / "file.png", n_lesion=2, n_normal=2, size=16)


def test_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    assert write_demo_dataset(tmp_path, n_lesion=2, n_normal=2, size=16).is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_lesion": 1}, "n_lesion"),
        ({"n_normal": 0}, "n_normal"),
        ({"size": 8}, "size"),
        ({"size": 15}, "size"),
        ({"size": 513}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(LesionsynthError, match=match):
        write_demo_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_manifest_loader_accepts_demo(demo: Path) -> None:
    try:
        manifest_module = importlib.import_module("models.data.manifest")
    except ImportError:
        pytest.skip("models.data.manifest is not available")
    loaded = manifest_module.load_manifest(demo, labels=["lesion", "normal"])
    assert loaded.labels() == ["lesion", "normal"]
    assert len(loaded.rows) == 32
