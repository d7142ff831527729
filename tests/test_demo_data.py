"""The demo dataset: complete, labelled as non-medical, deterministic, and its classes distinguishable."""

import csv

import numpy as np
import pytest
from PIL import Image

from models.data.demo import DATASET_NAME, write_demo_dataset
from models.data.manifest import load_manifest
from models.errors import LesionsynthError


def read(path):
    return np.asarray(Image.open(path))


def test_files_manifest_and_labels(tmp_path):
    path = write_demo_dataset(tmp_path / "d", n_lesion=6, n_normal=10, size=40, seed=1)
    manifest = load_manifest(path, labels=["lesion", "normal"])  # every row resolves and decodes
    labels = [r.label for r in manifest.rows]
    assert labels.count("lesion") == 6 and labels.count("normal") == 10
    assert labels != sorted(labels)  # interleaved, not grouped
    assert manifest.columns == ["image_path", "mask_path", "label", "diagnosis", "dataset"]
    assert {r.fields["dataset"] for r in manifest.rows} == {DATASET_NAME}
    for row in manifest.rows:
        image, mask = read(row.image_file), read(row.mask_file)
        assert image.shape == (40, 40, 3)
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
    assert "NOT medical images" in (tmp_path / "d" / "README.txt").read_text()


def test_deterministic_for_a_seed(tmp_path):
    a = write_demo_dataset(tmp_path / "a", n_lesion=3, n_normal=3, size=32, seed=7).parent
    b = write_demo_dataset(tmp_path / "b", n_lesion=3, n_normal=3, size=32, seed=7).parent
    c = write_demo_dataset(tmp_path / "c", n_lesion=3, n_normal=3, size=32, seed=8).parent
    names = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert names and names == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "manifest.csv").read_text() == (b / "manifest.csv").read_text()
    assert any((a / n).read_bytes() != (c / n).read_bytes() for n in names if (c / n).exists())


def test_lesions_differ_from_normals(tmp_path):
    path = write_demo_dataset(tmp_path / "d", n_lesion=20, n_normal=20, size=64, seed=0)
    stats = {"lesion": [], "normal": []}
    for row in csv.DictReader(path.read_text().splitlines()):
        image = read(path.parent / row["image_path"]).astype(float)
        mask = read(path.parent / row["mask_path"]) > 127
        inside = image[mask]
        stats[row["label"]].append((inside.mean(), mask.mean(), inside.std(axis=0).mean()))
    lesion, normal = np.array(stats["lesion"]), np.array(stats["normal"])
    assert lesion[:, 0].mean() < normal[:, 0].mean() - 20  # darker
    assert lesion[:, 1].mean() > normal[:, 1].mean()  # larger
    assert lesion[:, 2].mean() > 1.5 * normal[:, 2].mean()  # more varied in colour


def test_refuses_foreign_folders_and_bad_arguments(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(LesionsynthError, match="not a lesionsynth demo dataset"):
        write_demo_dataset(foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"
    demo = tmp_path / "demo"
    write_demo_dataset(demo, n_lesion=2, n_normal=2, size=16)
    write_demo_dataset(demo, n_lesion=2, n_normal=3, size=16)  # overwriting a demo folder is fine
    assert len(list((demo / "images").glob("*.png"))) == 5
    with pytest.raises(LesionsynthError, match="n_lesion"):
        write_demo_dataset(tmp_path / "x", n_lesion=1)
    with pytest.raises(LesionsynthError, match="size"):
        write_demo_dataset(tmp_path / "x", size=8)
