"""Shared fixtures: the demo dataset (split) and a tiny synthesizer trained on it, built once per session.

Both are real artifacts made by the same code users run; the tiny UNet (165 k parameters, 32 px) trains
for a few dozen steps, enough for every contract test (shapes, identity outside the mask, determinism,
resume), not for image quality, which is judged on PH2 in docs/ and in the benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
PH2 = REPO.parent / "shared" / "data" / "ph2"

TINY_STEPS = 24


def experiment_yaml(tmp_path: Path, manifest: Path, **keys) -> Path:
    """An experiment config file: the required keys (demo labels, ``out`` under ``tmp_path``) and ``keys``."""
    import yaml

    config = {
        "name": "test",
        "manifest": str(manifest),
        "out": str(tmp_path / "exp"),
        "positive_label": "lesion",
        "normal_label": "normal",
        **keys,
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_settings(manifest: Path, out: Path, **overrides):
    from models.diffusion.train import TrainSettings

    values = dict(
        manifest=manifest,
        lesion_label="lesion",
        out=out,
        resolution=32,
        preset="tiny",
        max_steps=TINY_STEPS,
        batch_size=4,
        checkpoint_every=8,
        log_every=4,
        seed=0,
        progress=False,
        device="cpu",
    )
    values.update(overrides)
    return TrainSettings(**values)


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory) -> Path:
    from models.data.demo import write_demo_dataset
    from models.data.manifest import load_manifest
    from models.data.split import add_split

    folder = tmp_path_factory.mktemp("demo") / "data"
    path = write_demo_dataset(folder, n_lesion=16, n_normal=32, size=48, seed=0)
    manifest = load_manifest(path)
    add_split(manifest, test_fraction=0.25, val_fraction=0.125, seed=0)
    manifest.save()
    return path


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory, demo_manifest) -> Path:
    from models.diffusion.train import train_synthesizer

    out = tmp_path_factory.mktemp("synth") / "model"
    train_synthesizer(tiny_settings(demo_manifest, out))
    return out


@pytest.fixture(scope="session")
def inpainter(tiny_synth):
    from models.diffusion.inpaint import LesionInpainter

    return LesionInpainter.from_pretrained(tiny_synth, device="cpu")


@pytest.fixture()
def normal_pair(demo_manifest):
    from models.data.manifest import load_manifest

    row = load_manifest(demo_manifest, check_files=False).rows_in("train", "normal")[0]
    return row.load()


@pytest.fixture(scope="session")
def ph2_manifest() -> Path:
    path = PH2 / "manifest_128.csv"
    if not path.is_file():
        pytest.skip(f"PH2 data not present at {PH2} (real-data tests skip without it)")
    return path


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, demo_manifest) -> Path:
    """A ResNet-18 at 32 px trained for one epoch on the demo data (a real folder with a threshold)."""
    from models.classifier.train import ClassifierTrainSettings, train_classifier

    out = tmp_path_factory.mktemp("clf") / "model"
    train_classifier(
        ClassifierTrainSettings(
            manifest=demo_manifest,
            positive_label="lesion",
            out=out,
            arch="resnet18",
            image_size=32,
            epochs=1,
            batch_size=16,
            progress=False,
            device="cpu",
        )
    )
    return out


@pytest.fixture(scope="session")
def serving_classifier(tmp_path_factory, tiny_classifier) -> Path:
    """The classifier's serving folder: model.onnx + card + a Triton repository (CPU instances)."""
    from models.export.serving import export_serving_folder

    out = tmp_path_factory.mktemp("serving") / "classifier"
    export_serving_folder(tiny_classifier, out, instance_kind="cpu")
    return out


def png_bytes(array: np.ndarray) -> bytes:
    from models.data.images import encode_png

    return encode_png(array)


def triton_helpers():
    """tests/triton/server.py (a real Triton via PyTriton), loaded by path: a ``tests/triton`` package
    would shadow the ``triton`` package torch depends on."""
    import importlib.util

    path = Path(__file__).resolve().parent / "triton" / "server.py"
    spec = importlib.util.spec_from_file_location("lesionsynth_tests_triton_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
