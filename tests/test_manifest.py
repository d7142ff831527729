import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data.manifest import load_manifest, read_manifest
from models.data.split import add_split, stratified_assignment
from models.errors import ConfigError, LesionsynthError, ManifestError


def write_rows(folder: Path, rows: list[dict], extra: dict | None = None) -> Path:
    path = folder / "manifest.csv"
    columns = ["image_path", "mask_path", "label"] + list(extra or {})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**(extra or {}), **row})
    return path


def make_pair(folder: Path, name: str, size=(16, 16), mask_size=None, empty=False, mode="RGB"):
    (folder / "img").mkdir(exist_ok=True)
    (folder / "msk").mkdir(exist_ok=True)
    arr = np.full((*size[::-1], 3), 120, np.uint8)
    img = Image.fromarray(arr).convert(mode)
    img.save(folder / "img" / f"{name}.png")
    m = np.zeros(mask_size[::-1] if mask_size else size[::-1], np.uint8)
    if not empty:
        m[4:10, 4:10] = 255
    Image.fromarray(m).save(folder / "msk" / f"{name}.png")
    return {"image_path": f"img/{name}.png", "mask_path": f"msk/{name}.png"}


def test_all_bad_rows_reported_at_once(tmp_path):
    good = make_pair(tmp_path, "good")
    gray = make_pair(tmp_path, "gray", mode="L")
    rgba = make_pair(tmp_path, "rgba", mode="RGBA")
    mismatch = make_pair(tmp_path, "mismatch", mask_size=(12, 16))
    empty = make_pair(tmp_path, "empty", empty=True)
    trunc = make_pair(tmp_path, "trunc", size=(64, 64))
    data = (tmp_path / trunc["image_path"]).read_bytes()
    (tmp_path / trunc["image_path"]).write_bytes(data[: len(data) // 2])
    (tmp_path / "img" / "text.png").write_text("not an image")
    rows = [
        {**good, "label": "lesion"},  # row 2
        {**gray, "label": "normal"},  # row 3: grayscale is fine
        {**rgba, "label": "normal"},  # row 4: RGBA is fine
        {"image_path": "img/missing.png", "mask_path": good["mask_path"], "label": "lesion"},  # row 5
        {**mismatch, "label": "lesion"},  # row 6
        {**empty, "label": "normal"},  # row 7
        {**good, "label": "tumour"},  # row 8
        {**trunc, "label": "lesion"},  # row 9
        {"image_path": "img/text.png", "mask_path": good["mask_path"], "label": "lesion"},  # row 10
    ]
    path = write_rows(tmp_path, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, labels=["lesion", "normal"])
    problems = info.value.problems
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert "row 5: image_path file is missing" in text
    assert "row 6: mask is 12x16 but image is 16x16" in text
    assert "row 7: mask is empty" in text
    assert "row 8: unknown label 'tumour'" in text
    assert any(p.startswith("row 9:") and "truncated" in p for p in problems)
    assert any(p.startswith("row 10:") and "not a supported image" in p for p in problems)
    for ok in ("row 2:", "row 3:", "row 4:"):
        assert not any(p.startswith(ok) for p in problems)
    assert "6 problem(s)" in str(info.value)


def test_missing_columns_and_empty_manifest(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,mask,label\na,b,c\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(path)
    path.write_text("image_path,mask_path,label\n")
    with pytest.raises(ManifestError, match="no records"):
        read_manifest(path)
    with pytest.raises(LesionsynthError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_extra_columns_kept_and_split_is_stratified(tmp_path):
    rows = []
    for i in range(40):
        pair = make_pair(tmp_path, f"p{i}")
        rows.append({**pair, "label": "lesion" if i < 8 else "normal", "patient": f"P{i}"})
    path = write_rows(tmp_path, rows, extra={"patient": ""})
    manifest = load_manifest(path)
    counts = add_split(manifest, test_fraction=0.25, val_fraction=0.125, seed=3)
    manifest.save()
    again = read_manifest(path)
    assert again.columns == ["image_path", "mask_path", "label", "patient", "split"]
    assert [r.fields["patient"] for r in again.rows] == [f"P{i}" for i in range(40)]
    assert counts[("test", "lesion")] == 2 and counts[("test", "normal")] == 8
    assert counts[("val", "lesion")] == 1 and counts[("val", "normal")] == 4
    assert counts[("train", "lesion")] == 5 and counts[("train", "normal")] == 20
    # deterministic for a seed, different for another
    labels = [r.label for r in manifest.rows]
    assert stratified_assignment(labels, 0.25, 0.125, 3) == [r.split for r in again.rows]
    assert stratified_assignment(labels, 0.25, 0.125, 4) != [r.split for r in again.rows]
    assert {r.split for r in again.rows_in("train")} == {"train"}


def test_split_refuses_to_resplit_without_force(tmp_path):
    rows = [{**make_pair(tmp_path, f"p{i}"), "label": "a" if i % 2 else "b"} for i in range(10)]
    manifest = load_manifest(write_rows(tmp_path, rows))
    add_split(manifest, test_fraction=0.2, val_fraction=0.2, seed=0)
    with pytest.raises(ConfigError, match="already has a 'split' column"):
        add_split(manifest, test_fraction=0.2, val_fraction=0.2, seed=1)
    add_split(manifest, test_fraction=0.2, val_fraction=0.2, seed=1, force=True)


def test_split_argument_errors():
    with pytest.raises(ConfigError, match="must be < 1"):
        stratified_assignment(["a"] * 10, 0.6, 0.5, 0)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        stratified_assignment(["a"] * 10, -0.1, 0.1, 0)


def test_scarce_class_appears_in_every_split():
    labels = ["rare"] * 3 + ["common"] * 100
    counts = Counter(zip(stratified_assignment(labels, 0.1, 0.1, 0), labels, strict=True))
    assert counts[("train", "rare")] == counts[("val", "rare")] == counts[("test", "rare")] == 1


def test_unsplit_manifest_refused_for_training(tmp_path):
    manifest = load_manifest(write_rows(tmp_path, [{**make_pair(tmp_path, "a"), "label": "x"}]))
    with pytest.raises(ConfigError, match="lesionsynth data split"):
        manifest.rows_in("train")


def test_save_elsewhere_rewrites_relative_paths(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [{**make_pair(src, f"p{i}"), "label": "x"} for i in range(3)]
    manifest = load_manifest(write_rows(src, rows))
    target = tmp_path / "elsewhere" / "deep" / "m.csv"
    manifest.save(target)
    moved = load_manifest(target)  # validates: every file must resolve from the new place
    assert moved.rows[0].fields["image_path"] == "../../src/img/p0.png"
    shutil.rmtree(src / "img")
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(target)


def test_ph2_manifest_loads(ph2_manifest):
    manifest = load_manifest(ph2_manifest, labels=["lesion", "non_melanoma"])
    assert Counter(r.label for r in manifest.rows) == {"lesion": 40, "non_melanoma": 160}
    assert "diagnosis" in manifest.columns
