"""Balancing: new manifest rows, provenance columns, resume and the split discipline."""

import json

import numpy as np
import pytest
from PIL import Image

import models.balance as balance_module
from models.balance import BalanceSettings, balance_dataset
from models.data.manifest import load_manifest
from models.errors import ConfigError, ParameterError


def settings(demo_manifest, model, out, **overrides):
    values = dict(
        manifest=demo_manifest,
        model=model,
        normal_label="normal",
        lesion_label="lesion",
        count=5,
        out=out,
        seed=0,
        batch_size=2,
        progress=False,
    )
    values.update(overrides)
    return BalanceSettings(**values)


def test_balance_writes_synthetic_rows(tmp_path, demo_manifest, tiny_synth):
    out = tmp_path / "balanced"
    path = balance_dataset(settings(demo_manifest, tiny_synth, out))
    original = load_manifest(demo_manifest)
    balanced = load_manifest(path, labels=["lesion", "normal"])  # every row resolves and decodes
    synthetic = [r for r in balanced.rows if r.fields["synthetic"] == "1"]
    assert len(balanced.rows) == len(original.rows) + 5 and len(synthetic) == 5
    card = json.loads((tiny_synth / "model_card.json").read_text())
    train_normals = {r.image_file.resolve() for r in original.rows_in("train", "normal")}
    for row in synthetic:
        assert row.label == "lesion" and row.split == "train"
        assert row.fields["model_version"] == card["model_version"]
        assert int(row.fields["seed"]) >= 0
        source = (out / row.fields["source_image"]).resolve()
        assert source in train_normals  # only train normals are ever transformed
        assert row.fields["diagnosis"] == ""  # the source's diagnosis is not copied onto a lesion
        image, mask = row.load()
        src = np.asarray(Image.open(source).convert("RGB"))
        assert (image[mask] != src[mask]).any()
    originals = [r for r in balanced.rows if r.fields["synthetic"] == "0"]
    assert [r.fields["label"] for r in originals] == [r.label for r in original.rows]
    assert len({r.fields["source_image"] for r in synthetic}) == 5  # 5 distinct sources when enough exist


def test_rerun_resumes_and_skips_finished_images(tmp_path, demo_manifest, tiny_synth, monkeypatch):
    out = tmp_path / "resume"
    calls = {"n": 0}
    real = balance_module.LesionInpainter.inpaint_batch

    def crash_after_first_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(balance_module.LesionInpainter, "inpaint_batch", crash_after_first_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        balance_dataset(settings(demo_manifest, tiny_synth, out))
    done = sorted((out / "synthetic").glob("*.png"))
    assert len(done) == 2 and not (out / "manifest.csv").exists()
    assert not list((out / "synthetic").glob(".*.tmp"))  # no partial files
    before = {p.name: p.stat().st_mtime_ns for p in done}

    monkeypatch.setattr(balance_module.LesionInpainter, "inpaint_batch", real)
    seen = []
    monkeypatch.setattr(
        balance_module.LesionInpainter,
        "inpaint_batch",
        lambda self, images, *a, **k: seen.append(len(images)) or real(self, images, *a, **k),
    )
    path = balance_dataset(settings(demo_manifest, tiny_synth, out))
    assert sum(seen) == 3  # only the 3 missing images were made
    assert {p.name: p.stat().st_mtime_ns for p in done} == before
    assert sum(r.fields["synthetic"] == "1" for r in load_manifest(path).rows) == 5

    # Same plan as an uninterrupted run: identical seeds and sources.
    clean = balance_dataset(settings(demo_manifest, tiny_synth, tmp_path / "clean"))
    strip = lambda p: [(r.fields["source_image"], r.fields["seed"]) for r in load_manifest(p).rows]  # noqa: E731
    assert strip(path) == strip(clean)


def test_rerun_with_other_settings_is_refused(tmp_path, demo_manifest, tiny_synth):
    out = tmp_path / "b"
    balance_dataset(settings(demo_manifest, tiny_synth, out, count=2))
    with pytest.raises(ConfigError, match="different count"):
        balance_dataset(settings(demo_manifest, tiny_synth, out, count=3))


def test_count_above_available_normals_reuses_sources_with_new_seeds(tmp_path, demo_manifest, tiny_synth):
    n_normals = len(load_manifest(demo_manifest, check_files=False).rows_in("train", "normal"))
    path = balance_dataset(
        settings(demo_manifest, tiny_synth, tmp_path / "many", count=n_normals + 2, steps=2, strength=0.5)
    )
    rows = [r for r in load_manifest(path).rows if r.fields["synthetic"] == "1"]
    assert len(rows) == n_normals + 2
    assert len({r.fields["seed"] for r in rows}) == len(rows)


def test_bad_balance_settings(tmp_path, demo_manifest, tiny_synth):
    with pytest.raises(ConfigError, match="must differ"):
        settings(demo_manifest, tiny_synth, tmp_path / "x", normal_label="lesion")
    with pytest.raises(ParameterError, match=r"count must be in \[1, 1000000\], got 0"):
        settings(demo_manifest, tiny_synth, tmp_path / "x", count=0)
    with pytest.raises(ConfigError, match="'nevus' does not occur"):
        balance_dataset(settings(demo_manifest, tiny_synth, tmp_path / "x", normal_label="nevus"))
    with pytest.raises(ConfigError, match="new folder"):
        balance_dataset(settings(demo_manifest, tiny_synth, demo_manifest.parent))
